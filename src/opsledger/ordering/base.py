"""Who decides the order of transactions.

The node hands every admitted-for-ordering transaction to an ``Orderer``; the orderer
delivers batches back in one total order, and the node turns each batch into a block.
In-process ordering is a queue and a thread (embedded mode). A NATS JetStream cluster
will implement the same protocol: ``submit`` publishes to a replicated stream, and every
node's ``deliver`` sees the same batches because cut markers travel in the stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from opsledger.core import SignedTransaction

__all__ = ["Deliver", "Orderer", "Pending", "PendingGroup"]


class PendingGroup:
    """One wait for many transactions (``submit_many``): a ``Future`` per transaction
    costs a Condition and an RLock to create and a notify to settle, which measured here
    as ~15% of the caller's time in bulk ingest. Members record their outcome in
    themselves; the group only counts them down, and ``wait`` wakes when all settled."""

    __slots__ = ("_done", "_lock", "_open", "_sealed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._sealed = False
        self._done = threading.Event()

    def _join(self) -> None:
        with self._lock:
            self._open += 1

    def _settled(self) -> None:
        with self._lock:
            self._open -= 1
            if self._sealed and self._open == 0:
                self._done.set()

    def seal(self) -> None:
        """No more members will join: ``wait`` may return once those there settled."""
        with self._lock:
            self._sealed = True
            if self._open == 0:
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True when every member settled, False on timeout."""
        return self._done.wait(timeout)


class Pending:
    """A transaction waiting for its block. Its outcome, the node's receipt once the
    block is durable or the admission error, is delivered through ``future`` or, for a
    member of a ``PendingGroup``, kept in ``outcome`` (read it after the group's wait).
    The orderer and the node settle it with ``begin``, ``resolve`` and ``fail``, from
    the one thread that delivers batches."""

    __slots__ = ("_future", "_group", "outcome", "signature_verified", "stx")

    def __init__(
        self,
        stx: SignedTransaction,
        signature_verified: bool = False,
        *,
        group: PendingGroup | None = None,
    ) -> None:
        self.stx = stx
        self.signature_verified = signature_verified
        self.outcome: Any = None
        self._group = group
        self._future: Future[Any] | None = None
        if group is None:
            self._future = Future()
        else:
            group._join()

    @property
    def future(self) -> Future[Any]:
        if self._future is None:
            raise TypeError("a member of a PendingGroup has no future: wait on the group")
        return self._future

    def begin(self) -> bool:
        """False when the writer cancelled before ordering: then nothing is written."""
        return self._future is None or self._future.set_running_or_notify_cancel()

    def done(self) -> bool:
        return self._future.done() if self._future is not None else self.outcome is not None

    def resolve(self, receipt: Any) -> None:
        self._settle(receipt, None)

    def fail(self, error: BaseException) -> None:
        self._settle(error, error)

    def _settle(self, outcome: Any, error: BaseException | None) -> None:
        if self._future is not None:
            if error is None:
                self._future.set_result(outcome)
            else:
                self._future.set_exception(error)
            return
        assert self._group is not None
        self.outcome = outcome
        self._group._settled()


Deliver = Callable[[Sequence[Pending]], None]


class Orderer(Protocol):
    def start(self, deliver: Deliver) -> None:
        """Begin delivering ordered batches to ``deliver`` (called from one thread)."""

    def submit(self, items: Sequence[Pending], *, flush: bool = False) -> None:
        """Queue transactions for ordering; returns at once. ``flush`` says no more
        items follow soon, so a batch need not wait for them."""

    def stop(self) -> None:
        """Deliver what is queued, then stop."""
