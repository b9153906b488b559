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
``if __name__ == "__main__"`` guard. It runs isolated (``-I``) with a minimal
environment: no ``PYTHONPATH`` can swap the ``nacl`` whose verdicts the node trusts, and
no token of the parent's environment is readable in its ``/proc/<pid>/environ``.

The pipes are raw file descriptors, not Python file objects, so a ``fork`` (a
``multiprocessing`` child, a pre-forking server) can never inherit a buffer lock held by
another thread: the child drops the inherited worker (``os.register_at_fork``) and starts
its own on first use. Every request carries a sequence number that the reply echoes with
its count; a reply out of step stops the worker, and what was waiting is verified here.

One worker is shared by every node in the process and started on first use (a fraction
of a second, once): opening a node for one ``opsledger record`` never starts it, because
batches smaller than ``min_batch`` are verified on the caller's thread. If the worker
dies, the batches in flight are verified locally and the next batch starts a new worker;
after three workers in a row die without answering (no PyNaCl for the worker, an odd
``sys.executable``), verification stays in-process for a minute before trying again. A
verdict is never lost or guessed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from opsledger.core import SignatureChecker
from opsledger.core.crypto import VerifyItem, combine_verdicts
from opsledger.ledger.sigworker import HEAD, ITEM

__all__ = ["ProcessSignatureChecker", "WorkerGone", "verifier_pids"]

_log = logging.getLogger(__name__)
_WORKER = Path(__file__).with_name("sigworker.py")
_ENV_KEPT = ("PATH", "LD_LIBRARY_PATH", "SYSTEMROOT", "LANG", "LC_ALL")
_FAILED_STARTS_BEFORE_PAUSE = 3
_PAUSE_SECONDS = 60.0
_MAX_FRAME = 4096
"""Signatures per frame at most: a bigger batch (verify sends whole blocks, and a block
may hold any number) goes as several frames, so no single reply takes long."""
_STALL_SECONDS = 30.0
"""A worker with requests waiting and no reply for this long is killed, and its batches
are verified here: a stopped (SIGSTOP) or wedged worker must not hold every writer of
the node forever. A full frame takes ~0.3 s at the worker's ~14,000 verifies a second,
so this is a 100-fold margin."""


class WorkerGone(RuntimeError):
    """The verifier process is not there; its batches are verified in this process."""


def _body(items: Sequence[VerifyItem]) -> bytes:
    parts: list[bytes] = []
    for key, domain, message, sig in items:
        data = domain + message
        parts += (ITEM.pack(len(key.raw), len(sig), len(data)), key.raw, sig, data)
    return b"".join(parts)


def _widen(fd: int) -> None:
    """Let a pipe hold several frames (Linux; 64 KiB by default, less than one 256-item
    frame), so the thread that hands signatures over does not wait until the worker has
    read most of a frame: measured, that wait made parsing a chunk take 17-26 ms instead
    of about 8, with the worker idle between chunks."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is None:
        return
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = 1 << 20
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, set_size, min(limit, 4 << 20))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class _Worker:
    """One ``sigworker.py`` process; replies come back in request order."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        request_read, self._requests = os.pipe()
        self._replies, reply_write = os.pipe()
        _widen(self._requests)
        try:
            self.process = subprocess.Popen(  # our own script by path, no shell
                [sys.executable, "-I", str(_WORKER)],
                stdin=request_read,
                stdout=reply_write,
                close_fds=True,
                env={k: os.environ[k] for k in _ENV_KEPT if k in os.environ},
            )
        except BaseException:
            os.close(self._requests)
            os.close(self._replies)
            raise
        finally:
            os.close(request_read)
            os.close(reply_write)
        self._waiting: deque[tuple[int, int, Future[list[bool]]]] = deque()
        self._seq = 0
        self.answered = 0
        # Two locks: ``_write`` keeps frames whole and in the order of ``_waiting`` and is
        # held across a pipe write that blocks until the worker reads; ``_state`` guards
        # ``_waiting`` and ``alive`` for moments only, so the reader can always take its
        # reply's future and keep draining the worker's output (one lock for both would
        # let a blocked writer stop the reader, and a full output pipe stop the worker).
        self._write = threading.Lock()
        self._state = threading.Lock()
        self._requests_open = True
        self.alive = True
        self._progress = time.monotonic()  # the last reply, or the first request since
        self._closed = threading.Event()
        threading.Thread(target=self._read_replies, name="sigworker-reader", daemon=True).start()
        threading.Thread(target=self._watch, name="sigworker-watchdog", daemon=True).start()

    def submit(self, items: Sequence[VerifyItem]) -> Future[list[bool]]:
        body = _body(items)
        future: Future[list[bool]] = Future()
        with self._write:
            with self._state:
                if not self.alive or not self._requests_open:
                    raise WorkerGone("the verifier process has exited")
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                seq = self._seq
                if not self._waiting:
                    self._progress = time.monotonic()
                self._waiting.append((seq, len(items), future))
            try:
                _write_all(self._requests, HEAD.pack(seq, len(items)) + body)
            except OSError:  # gone: the reader fails what waits, this future included
                with self._state:
                    self.alive = False
        return future

    def _read_replies(self) -> None:
        try:
            while (head := _read_exact(self._replies, HEAD.size)) is not None:
                seq, count = HEAD.unpack(head)
                body = _read_exact(self._replies, count)
                if body is None:
                    break
                with self._state:
                    expected = self._waiting.popleft() if self._waiting else None
                if expected is None or expected[:2] != (seq, count):
                    _log.error("signature verifier reply out of step; stopping the worker")
                    if expected is not None:
                        with self._state:
                            self._waiting.appendleft(expected)  # failed below with the rest
                    self.process.kill()
                    break
                self.answered += 1
                self._progress = time.monotonic()
                expected[2].set_result([byte == 1 for byte in body])
        except OSError:
            pass
        finally:
            with self._state:
                self.alive = False
                orphans = [future for _, _, future in self._waiting]
                self._waiting.clear()
            for future in orphans:
                future.set_exception(WorkerGone("the verifier process exited"))
            os.close(self._replies)
            self.close()

    def _watch(self) -> None:
        """Kill a worker that keeps requests waiting without answering (see
        ``_STALL_SECONDS``); the reader then sees its output end and fails what waits,
        which the checker verifies in this process."""
        period = min(1.0, _STALL_SECONDS / 4)
        while not self._closed.wait(period):
            with self._state:
                stalled = bool(self._waiting) and (
                    time.monotonic() - self._progress > _STALL_SECONDS
                )
            if stalled:
                _log.error(
                    "signature verifier process %d answered nothing for %.0f s; killing it",
                    self.process.pid,
                    _STALL_SECONDS,
                )
                with contextlib.suppress(OSError):
                    self.process.kill()
                return

    def close(self, timeout: float = 5.0) -> None:
        """End the worker (EOF on its input) and reap it; kill it if it does not go."""
        self._closed.set()
        if self._write.acquire(timeout=timeout):
            try:
                if self._requests_open:
                    self._requests_open = False
                    os.close(self._requests)
            finally:
                self._write.release()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def abandon_after_fork(self) -> None:
        """In a forked child: this worker is the parent's. Close the inherited pipe ends
        (raw descriptors, owned by nothing else here) and leave the process alone."""
        for fd in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)


class _SharedWorker:
    """The process-wide verifier, started on first use and replaced once it exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._failed_starts = 0
        self._paused_until = 0.0

    def get(self) -> _Worker:
        with self._lock:
            worker = self._worker
            if worker is not None and worker.alive and worker.owner == os.getpid():
                return worker
            if worker is not None and worker.answered == 0 and worker.owner == os.getpid():
                self._failed_starts += 1  # it died without ever answering
            elif worker is not None:
                self._failed_starts = 0
            if self._failed_starts >= _FAILED_STARTS_BEFORE_PAUSE:
                self._failed_starts = 0
                self._paused_until = time.monotonic() + _PAUSE_SECONDS
                _log.warning("signature verifier process does not start; verifying in-process")
            if time.monotonic() < self._paused_until:
                raise WorkerGone("the verifier process is paused after failed starts")
            try:
                self._worker = _Worker()
            except (OSError, ValueError, TypeError) as exc:
                self._paused_until = time.monotonic() + _PAUSE_SECONDS
                raise WorkerGone(f"cannot start the verifier process: {exc}") from exc
            return self._worker

    def current(self) -> _Worker | None:
        with self._lock:
            return self._worker

    def shutdown(self) -> None:
        """At exit: end this process's worker (a fork's inherited one is not ours)."""
        worker = self._worker
        if worker is not None and worker.owner == os.getpid():
            worker.close()

    def forget_after_fork(self) -> None:
        """In a forked child: locks may have been held by threads that do not exist
        here, and the worker belongs to the parent. Start clean."""
        worker = self._worker
        self.__init__()  # type: ignore[misc]  # fresh locks and state, on purpose
        if worker is not None:
            worker.abandon_after_fork()


_shared = _SharedWorker()
atexit.register(_shared.shutdown)
os.register_at_fork(after_in_child=_shared.forget_after_fork)


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
        if len(items) > _MAX_FRAME:
            frames = range(0, len(items), _MAX_FRAME)
            return combine_verdicts([self._start_frame(items[i : i + _MAX_FRAME]) for i in frames])
        return self._start_frame(items)

    def _start_frame(self, items: Sequence[VerifyItem]) -> Future[list[bool]]:
        try:
            remote = _shared.get().submit(items)
        except WorkerGone:  # not running, could not start, or gone this instant
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
