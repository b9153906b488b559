"""The storage protocol: the smallest interface the ledger node needs.

Two states are kept apart (as Tessera names them): a transaction is *sequenced* when it
has a durable leaf index inside a committed block, and *integrated* when the Merkle tree
nodes covering it and the block's signed checkpoint are stored. ``append_block`` does both
in one database transaction, so after a crash either the whole block is there (leaves,
tree nodes, checkpoint, nonces) or none of it.

Stores hold bytes and indexed columns; they never parse or verify. The node verifies
before it writes and ``opsledger verify`` re-checks everything the store returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BlockRecord",
    "LedgerStore",
    "NodeId",
    "TxQuery",
    "TxRecord",
]

NodeId = tuple[int, int]
"""A perfect-subtree node of the global Merkle tree: (level, index); level 0 = leaves."""


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One sequenced transaction as stored."""

    tx_id: str  # hex SHA-256 of ``leaf``
    leaf_index: int  # position in the global log, 0-based
    height: int  # block height
    type: str
    actor: str
    subject_kind: str
    subject_id: str
    ts: str  # the transaction's own RFC 3339 timestamp (as signed)
    nonce: int
    leaf: bytes  # canonical signed transaction bytes (RFC 8785)


@dataclass(frozen=True, slots=True)
class BlockRecord:
    height: int
    block_hash: str  # hex
    log_size: int  # log size after this block
    log_root: str  # hex
    time: str
    data: bytes  # canonical signed block bytes
    checkpoint: str  # C2SP signed note for log_size


@dataclass(frozen=True, slots=True)
class TxQuery:
    """Filters for ``query_txs``; all optional, combined with AND.

    ``after`` is a cursor: only leaf indexes strictly greater (or strictly smaller when
    ``descending``) are returned. ``since``/``until`` compare the transaction timestamp
    (inclusive since, exclusive until), as RFC 3339 strings in UTC with the same format.
    """

    type: str | None = None  # exact type, or a prefix ending in ".*" such as "build.*"
    actor: str | None = None
    subject_kind: str | None = None
    subject_id: str | None = None
    since: str | None = None
    until: str | None = None
    after: int | None = None
    limit: int = 100
    descending: bool = False


class LedgerStore(Protocol):
    """What the ledger node needs from persistence. Implementations must be thread-safe:
    one writer (the committer) and many concurrent readers (API threads)."""

    def initialize(self) -> None:
        """Create tables and indexes if missing. Idempotent."""

    def close(self) -> None: ...

    # -- metadata (ledger id, origin, node name; written once by init) --
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    # -- the one write path --
    def append_block(
        self,
        block: BlockRecord,
        txs: Sequence[TxRecord],
        nodes: Sequence[tuple[int, int, bytes]],
        nonces: dict[str, int],
    ) -> None:
        """Atomically and durably store a block, its transactions, the new perfect-subtree
        tree nodes (level, index, hash), and each actor's new last nonce. Raises
        ``StorageError`` (nothing stored) if the height or any leaf index is already taken
        or the block does not extend the head."""

    # -- reads --
    def head(self) -> BlockRecord | None:
        """The highest block, or None for an empty store."""

    def get_block(self, height: int) -> BlockRecord | None: ...

    def iter_blocks(self, start: int = 0, end: int | None = None) -> Iterator[BlockRecord]:
        """Blocks with start <= height < end (end None: to the head), in order."""

    def get_block_by_log_size(self, log_size: int) -> BlockRecord | None:
        """The block whose ``log_size`` equals the argument (to find a checkpoint)."""

    def get_tx(self, tx_id: str) -> TxRecord | None: ...

    def get_tx_by_leaf(self, leaf_index: int) -> TxRecord | None: ...

    def iter_txs(self, start: int = 0, end: int | None = None) -> Iterator[TxRecord]:
        """Transactions with start <= leaf_index < end, in leaf order."""

    def txs_in_block(self, height: int) -> list[TxRecord]: ...

    def query_txs(self, query: TxQuery) -> list[TxRecord]:
        """Indexed lookups (type, actor, subject, time, cursor); never a full scan for
        the equality filters."""

    def count_txs(self) -> int: ...

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        """Hashes of perfect-subtree nodes in the order asked. Raises ``StorageError``
        if any is missing."""

    def last_nonces(self) -> dict[str, int]:
        """Every actor's last accepted nonce (loaded once at node start)."""

    def check_integrity(self) -> str | None:
        """What ``verify`` cannot see through the other methods: the storage's own
        consistency (a damaged file, a lookup key that disagrees with its row). Returns
        the first problem found in one line, or ``None``."""

    def size_bytes(self) -> int:
        """Bytes the store occupies on disk (for the bytes-per-transaction figure)."""
