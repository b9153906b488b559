"""In-process ordering for the embedded mode: arrival order, cut by count or time.

Group commit, self-clocked: whatever queued while the previous block was being written
becomes the next block (up to ``max_batch``), so concurrent writers share one fsync
without anyone sleeping for company. ``max_wait`` (default 0) additionally holds a batch
until that many seconds have passed since its first transaction arrived, for bigger
blocks (fewer checkpoints) at the cost of latency; a writer that knows nothing follows
its items (``submit(..., flush=True)``, the end of a ``submit_many``) cuts at once.

Measured here: with a 5 ms wait, 8 threads each submitting one transaction at a time got
800-1,000 tx/s in blocks of 7.3; with none, 1,350-2,500 tx/s in blocks of 3.6 (every
sequential writer, the contract runner's verdicts among them, no longer waits 5 ms).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from opsledger.core import StorageError
from opsledger.ordering.base import Deliver, Pending

__all__ = ["InProcessOrderer"]


class InProcessOrderer:
    def __init__(self, *, max_batch: int = 2000, max_wait: float = 0.0) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: deque[Pending] = deque()
        self._first_arrival = 0.0  # when the oldest queued item arrived
        self._flush = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deliver: Deliver | None = None

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="orderer", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[Pending], *, flush: bool = False) -> None:
        with self._cond:
            if self._stopping or self._thread is None:
                raise StorageError("the ledger node is not running: nothing was written")
            if not self._queue:
                self._first_arrival = time.monotonic()
            self._queue.extend(items)
            self._flush = self._flush or (flush and bool(self._queue))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _next_batch(self) -> list[Pending] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._first_arrival + self.max_wait
            while len(self._queue) < self.max_batch and not (self._stopping or self._flush):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            count = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            if not self._queue:
                self._flush = False
            # else: the rest arrived before this cut, so the next one takes it at once
            return batch

    def _run(self) -> None:
        assert self._deliver is not None
        while (batch := self._next_batch()) is not None:
            try:
                self._deliver(batch)
            except BaseException as exc:  # a failed block fails its writers, not the thread
                for item in batch:
                    if not item.done():
                        item.fail(exc)
