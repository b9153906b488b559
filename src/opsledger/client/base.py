"""The ``LedgerClient`` protocol every service uses to reach the ledger, and ``Signer``.

Signing happens here, on the client side: a node never holds a user's private key.
Results are the API's JSON shapes (plain dicts), so the in-process and HTTP clients are
interchangeable and the CLI prints them as they are with ``--json``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from opsledger.core import Clock, OpsledgerError, ReplayRejected, SystemClock

if TYPE_CHECKING:
    # The transaction models and Ed25519 load when something signs (``Signer``), not when
    # a service imports the ``Recorder`` protocol: ``opsledger index --once`` without a
    # home signs nothing, and importing them cost ~30 ms of its start-up.
    from opsledger.core import PrivateKey, Receipt, SignedTransaction, Subject

__all__ = [
    "LedgerClient",
    "NullRecorder",
    "Recorder",
    "Signer",
    "TxFilter",
    "all_transactions",
    "resign_past_ledger",
    "submit_signed",
]

TxFilter = dict[str, Any]
"""Filters for ``list_transactions``: type, actor, subject ("kind:id"), since, until,
after (a leaf-index cursor), limit, order ("asc"/"desc")."""


class LedgerClient(Protocol):
    def submit(self, stx: SignedTransaction) -> Receipt:
        """Append one signed transaction; returns once its block is durable."""

    def submit_many(self, stxs: Sequence[SignedTransaction]) -> list[Receipt | OpsledgerError]:
        """Append many; each gets its receipt or its own error, in order."""

    def get_transaction(self, tx_id: str, *, proof: bool = False) -> dict[str, Any]:
        """``{tx_id, leaf_index, height, leaf (base64 canonical bytes), transaction}`` and,
        with ``proof``, ``proof`` (see ``inclusion_proof``)."""

    def list_transactions(self, filters: TxFilter) -> list[dict[str, Any]]: ...

    def get_block(self, height: int) -> dict[str, Any]: ...

    def head(self) -> dict[str, Any]:
        """``{height, log_size, log_root, block_hash, time, origin, genesis_hash}``."""

    def checkpoint(self, size: int | None = None) -> str: ...

    def inclusion_proof(self, tx_id: str, size: int | None = None) -> dict[str, Any]:
        """``{tx_id, leaf_index, tree_size, leaf_hash, hashes, checkpoint}``."""

    def consistency_proof(self, first: int, second: int) -> dict[str, Any]:
        """``{first, second, hashes, first_checkpoint, second_checkpoint}``."""

    def actor(self, name: str) -> dict[str, Any]:
        """``{actor, roles, kind, keys: [{key_id, active}], last_nonce}``."""

    def close(self) -> None: ...


def all_transactions(
    client: LedgerClient, filters: TxFilter, *, page_size: int = 1000
) -> list[dict[str, Any]]:
    """Every row matching ``filters``, oldest first, page by page (the cursor is the
    leaf index, so rows committed while paging are neither skipped nor repeated)."""
    rows: list[dict[str, Any]] = []
    after = filters.get("after")
    while True:
        page = client.list_transactions({**filters, "after": after, "limit": page_size})
        rows.extend(page)
        if len(page) < page_size:
            return rows
        after = int(page[-1]["leaf_index"])


class Recorder(Protocol):
    """Where a long-running service (gateway, indexer, monitor) writes its evidence.

    ``record`` never blocks the service's hot path on the ledger: an implementation may
    queue, batch and retry, and ``flush`` waits until everything queued is on the ledger
    (or raises). Services depend on this protocol only, so they run the same with a local
    ledger, a remote ``opsledger serve`` or no ledger at all (``NullRecorder``).
    """

    def record(
        self,
        tx_type: str,
        subject: Subject,
        body: dict[str, Any],
        refs: Sequence[str] = (),
    ) -> None: ...

    def flush(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


class NullRecorder:
    """Records nothing: a service started without a ledger home."""

    def record(
        self,
        tx_type: str,
        subject: Subject,
        body: dict[str, Any],
        refs: Sequence[str] = (),
    ) -> None:
        return None

    def flush(self, timeout: float = 10.0) -> None:
        return None

    def close(self) -> None:
        return None


class Signer:
    """Builds and signs transactions for one actor with strictly increasing nonces.

    Nonces are microseconds since the epoch, bumped past the last one used, so separate
    processes signing for one actor (CI jobs, CLI calls) stay increasing without asking
    the node; a rare collision is refused as a replay and the caller re-signs.
    """

    def __init__(
        self, actor: str, key: PrivateKey, clock: Clock | None = None, *, ledger: str
    ) -> None:
        self.actor = actor
        self.key = key
        self.ledger = ledger  # the ledger's checkpoint origin: signatures bind to it
        self.clock = clock or SystemClock()
        self._last = 0
        self._lock = threading.Lock()

    def next_nonce(self) -> int:
        with self._lock:
            now = int(self.clock.now().timestamp() * 1_000_000)
            self._last = max(now, self._last + 1)
            return self._last

    def bump_past(self, nonce: int) -> None:
        with self._lock:
            self._last = max(self._last, nonce)

    def sign(
        self,
        tx_type: str,
        subject: Subject,
        body: dict[str, Any],
        refs: Sequence[str] = (),
    ) -> SignedTransaction:
        from opsledger.core import Transaction, format_ts, sign_transaction

        tx = Transaction(
            type=tx_type,
            actor=self.actor,
            key_id=self.key.key_id,
            ts=format_ts(self.clock.now()),
            nonce=self.next_nonce(),
            subject=subject,
            body=body,
            refs=tuple(refs),
            ledger=self.ledger,
        )
        return sign_transaction(tx, self.key)


def submit_signed(client: LedgerClient, signer: Signer, stx: SignedTransaction) -> Receipt:
    """Submit one signed transaction, re-signing once after a nonce collision.

    Nonces are microseconds chosen by the signer without asking the node, so two
    processes signing for one actor can collide; the node then refuses the later one as
    a replay. Re-signing the same content with a nonce past the actor's last accepted one
    (asked from the ledger) is safe, since it is a new transaction, and needed only once.
    """
    try:
        return client.submit(stx)
    except ReplayRejected:
        (again,) = resign_past_ledger(client, signer, [stx])
        return client.submit(again)


def resign_past_ledger(
    client: LedgerClient, signer: Signer, refused: Sequence[SignedTransaction]
) -> list[SignedTransaction]:
    """The same transactions signed again with nonces past both theirs and the actor's
    last nonce on the ledger: what to send after the node refused them as replays
    because another writer for this actor got a later nonce in first."""
    last = client.actor(signer.actor).get("last_nonce")
    newest = max((stx.tx.nonce for stx in refused), default=0)
    signer.bump_past(max(newest, last if isinstance(last, int) else 0))
    return [signer.sign(s.tx.type, s.tx.subject, s.tx.body, s.tx.refs) for s in refused]
