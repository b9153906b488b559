"""Signature verification in a worker process, for the node's ingest pipeline.

Why a process and not threads: libsodium's verify releases the GIL, but the Python loop
around each call needs it back between signatures. While the node parses the next chunk
and commits the last one (both pure Python, both holding the GIL), verifier threads wait
up to the interpreter's switch interval for every reacquisition, so three GIL users
convoy and two cores do the work of about one and a half. Measured on the 2-core
machine (``bench/ledger.py``, submit_many of 2,000-transaction calls): verifier threads
7,000-10,000 tx/s; one verifier process 11,800-12,100 tx/s with the node process
spending 70 µs of CPU per transaction instead of 130. The process gets the signatures
as bytes (about 650 per transaction), which costs far less than the convoy.

One pool is shared by every node in the process and started on first use (about a
quarter of a second, once): opening a node for one ``opsledger record`` never starts it,
because batches smaller than ``min_batch`` are verified on the caller's thread. If the
worker dies, the pool is replaced and the batch is verified locally: a verdict is never
lost or guessed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from opsledger.core import SignatureChecker
from opsledger.core.crypto import VerifyItem, verify_raw

__all__ = ["ProcessSignatureChecker", "verifier_pids"]

_log = logging.getLogger(__name__)


class _SharedPool:
    """The process-wide verifier pool, created on first use and replaced if it breaks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # One worker beside the node's own process on a 2-core machine: the node
                # process needs a core for parsing and committing.
                workers = max(1, (os.cpu_count() or 2) - 1)
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(workers, mp_context=context)
            return self._pool

    def current(self) -> ProcessPoolExecutor | None:
        with self._lock:
            return self._pool

    def drop(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)


_shared = _SharedPool()


def verifier_pids() -> list[int]:
    """The live verifier processes (for CPU accounting in benchmarks and diagnostics)."""
    pool = _shared.current()
    return [] if pool is None else list(pool._processes or {})


class ProcessSignatureChecker(SignatureChecker):
    """Verifies batches of ``min_batch`` or more signatures in the shared worker process;
    smaller ones on the caller's thread (a round trip costs more than a few verifies)."""

    def __init__(self, *, min_batch: int = 64) -> None:
        self.min_batch = min_batch

    def verify_many(self, items: Sequence[VerifyItem]) -> list[bool]:
        return self.start(items).result()

    def start(self, items: Sequence[VerifyItem]) -> Future[list[bool]]:
        if len(items) < self.min_batch:
            return super().start(items)
        payload = [(key.raw, domain + message, sig) for key, domain, message, sig in items]
        pool = _shared.get()
        try:
            remote = pool.submit(verify_raw, payload)
        except (BrokenProcessPool, RuntimeError):  # broken, or shut down at exit
            _shared.drop(pool)
            return super().start(items)
        result: Future[list[bool]] = Future()

        def settle(done: Future[list[bool]]) -> None:
            try:
                result.set_result(done.result())
            except BaseException:  # the worker died: verify here, never guess
                _log.warning("signature verifier process failed; verifying in-process")
                _shared.drop(pool)
                result.set_result(SignatureChecker.verify_many(self, items))

        remote.add_done_callback(settle)
        return result
