"""Signature verification in a worker process, for the node's ingest pipeline and verify.

Why a process and not threads: libsodium's verify releases the GIL, but the Python loop
around each call needs it back between signatures. While the node parses the next chunk
and commits the last one (both pure Python, both holding the GIL), verifier threads wait
up to the interpreter's switch interval for every reacquisition, so three GIL users
convoy and two cores do the work of about one and a half (docs/adr/0006). The worker
gets the signatures as bytes (about 650 per transaction) and answers one byte each.

The worker is ``sigworker.py`` run by path in a plain subprocess, not a
``multiprocessing`` child: spawn re-imports the parent's ``__main__``, which fails for
``python -c`` or stdin and re-runs the module-level code of a user's script that has no
``if __name__ == "__main__"`` guard.

One worker is shared by every node in the process and started on first use (a fraction
of a second, once): opening a node for one ``opsledger record`` never starts it, because
batches smaller than ``min_batch`` are verified on the caller's thread. If the worker
dies, the batches in flight are verified locally and the next batch starts a new worker:
a verdict is never lost or guessed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO

from opsledger.core import SignatureChecker
from opsledger.core.crypto import VerifyItem
from opsledger.ledger.sigworker import COUNT, ITEM

__all__ = ["ProcessSignatureChecker", "WorkerGone", "verifier_pids"]

_log = logging.getLogger(__name__)
_WORKER = Path(__file__).with_name("sigworker.py")


class WorkerGone(RuntimeError):
    """The verifier process exited; its batches are verified in this process instead."""


def _frame(items: Sequence[VerifyItem]) -> bytes:
    parts = [COUNT.pack(len(items))]
    for key, domain, message, sig in items:
        data = domain + message
        parts.append(ITEM.pack(len(key.raw), len(sig), len(data)))
        parts += (key.raw, sig, data)
    return b"".join(parts)


class _Worker:
    """One ``sigworker.py`` process; replies come back in request order."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(  # our own script by path, no shell
            [sys.executable, str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._waiting: deque[Future[list[bool]]] = deque()
        # Two locks: ``_write`` keeps frames whole and in the order of ``_waiting`` and is
        # held across a pipe write that blocks until the worker reads; ``_state`` guards
        # ``_waiting`` and ``alive`` for moments only, so the reader can always take its
        # reply's future and keep draining the worker's output (one lock for both would
        # let a blocked writer stop the reader, and a full output pipe stop the worker).
        self._write = threading.Lock()
        self._state = threading.Lock()
        self.alive = True
        threading.Thread(target=self._read_replies, name="sigworker-reader", daemon=True).start()

    def submit(self, items: Sequence[VerifyItem]) -> Future[list[bool]]:
        frame = _frame(items)
        future: Future[list[bool]] = Future()
        stdin = self.process.stdin
        assert stdin is not None
        with self._write:
            with self._state:
                if not self.alive:
                    raise WorkerGone("the verifier process has exited")
                self._waiting.append(future)
            try:
                stdin.write(frame)
                stdin.flush()
            except (OSError, ValueError):  # gone: the reader fails what waits, this included
                with self._state:
                    self.alive = False
        return future

    def _read_replies(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while (head := _read_exact(stdout, COUNT.size)) is not None:
                (count,) = COUNT.unpack(head)
                body = _read_exact(stdout, count)
                if body is None:
                    break
                with self._state:
                    future = self._waiting.popleft()
                future.set_result([byte == 1 for byte in body])
        finally:
            with self._state:
                self.alive = False
                orphans = list(self._waiting)
                self._waiting.clear()
            for future in orphans:
                future.set_exception(WorkerGone("the verifier process exited"))
            self.close()

    def close(self) -> None:
        """Close the pipes (the worker exits on EOF) and reap it; called by the reader
        thread once the worker's output ends."""
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


class _SharedWorker:
    """The process-wide verifier, started on first use and replaced once it exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    def get(self) -> _Worker:
        with self._lock:
            if self._worker is None or not self._worker.alive:
                self._worker = _Worker()
                atexit.register(self._worker.close)  # EOF ends the worker; reap it
            return self._worker

    def current(self) -> _Worker | None:
        with self._lock:
            return self._worker


_shared = _SharedWorker()


def verifier_pids() -> list[int]:
    """The live verifier process (for CPU accounting in benchmarks and diagnostics)."""
    worker = _shared.current()
    return [worker.process.pid] if worker is not None and worker.alive else []


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
        try:
            remote = _shared.get().submit(items)
        except (OSError, WorkerGone):  # could not start, or gone this instant
            return super().start(items)
        result: Future[list[bool]] = Future()

        def settle(done: Future[list[bool]]) -> None:
            try:
                verdicts = done.result()
            except WorkerGone:  # verify here, never guess
                _log.warning("signature verifier process exited; verifying in-process")
                verdicts = SignatureChecker.verify_many(self, items)
            result.set_result(verdicts)

        remote.add_done_callback(settle)
        return result
