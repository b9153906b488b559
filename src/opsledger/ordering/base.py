"""Who decides the order of transactions.

The node hands every admitted-for-ordering transaction to an ``Orderer``; the orderer
delivers batches back in one total order, and the node turns each batch into a block.
In-process ordering is a queue and a thread (embedded mode). A NATS JetStream cluster
will implement the same protocol: ``submit`` publishes to a replicated stream, and every
node's ``deliver`` sees the same batches because cut markers travel in the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from opsledger.core import SignedTransaction

__all__ = ["Deliver", "Orderer", "Pending"]


@dataclass(slots=True)
class Pending:
    """A transaction waiting for its block; ``future`` resolves to the node's receipt
    once the block is durable, or to the admission error."""

    stx: SignedTransaction
    signature_verified: bool = False
    future: Future[Any] = field(default_factory=Future)


Deliver = Callable[[Sequence[Pending]], None]


class Orderer(Protocol):
    def start(self, deliver: Deliver) -> None:
        """Begin delivering ordered batches to ``deliver`` (called from one thread)."""

    def submit(self, items: Sequence[Pending], *, flush: bool = False) -> None:
        """Queue transactions for ordering; returns at once. ``flush`` says no more
        items follow soon, so a batch need not wait for them."""

    def stop(self) -> None:
        """Deliver what is queued, then stop."""
