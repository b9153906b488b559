"""The SQLite store's schema, its statements and its migrations (``store/sqlite.py`` runs
them). Kept apart so the connection and transaction handling there reads on its own; the
schema's reasons are in docs/adr/0007 and the ``sqlite`` module docstring."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from opsledger.core.errors import StorageError
from opsledger.store.base import BlockRecord, TxRecord

__all__ = [
    "INSERT_BLOCK",
    "INSERT_NODE",
    "INSERT_TX",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_TXS",
    "UPSERT_NONCE",
    "check_new_ids",
    "migrate_1_to_2",
    "tx_key",
    "tx_row",
]

SCHEMA_VERSION = 2
"""Stored in ``PRAGMA user_version``; a newer file is refused rather than misread, an
older one is migrated by ``SqliteStore.initialize`` (``migrate_1_to_2``)."""

_KEY_PROBE = 500
"""tx keys looked up per statement by ``append_block``'s uniqueness check."""

# Column lists follow the dataclass field order, so ``Record(*row)`` builds a record.
# Statements are spelled out in full rather than assembled, so no SQL is built at runtime
# except the WHERE clause of query_txs (fixed fragments, bound values).
SELECT_TXS = (
    "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
    "nonce, leaf FROM txs"
)

# Blocks are never deleted, so the foreign key needs no index on txs.height (it is only
# consulted on the referencing side, through the blocks primary key).
_CREATE_TXS = """CREATE TABLE IF NOT EXISTS {name} (
        leaf_index INTEGER PRIMARY KEY CHECK (leaf_index >= 0),
        tx_id TEXT NOT NULL,
        tx_key INTEGER NOT NULL,
        height INTEGER NOT NULL REFERENCES blocks (height),
        type TEXT NOT NULL,
        actor TEXT NOT NULL,
        subject_kind TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        ts TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        leaf BLOB NOT NULL
    )"""

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS blocks (
        height INTEGER PRIMARY KEY CHECK (height >= 0),
        block_hash TEXT NOT NULL,
        log_size INTEGER NOT NULL UNIQUE CHECK (log_size >= 0),
        log_root TEXT NOT NULL,
        time TEXT NOT NULL,
        data BLOB NOT NULL,
        checkpoint TEXT NOT NULL
    )""",
    _CREATE_TXS.format(name="txs"),
    # get_tx and the uniqueness check in append_block (see the module docstring).
    "CREATE INDEX IF NOT EXISTS txs_key ON txs (tx_key)",
    # One index per TxQuery filter, each ending in leaf_index so results come out in
    # cursor order without a sort for equality filters.
    "CREATE INDEX IF NOT EXISTS txs_type ON txs (type, leaf_index)",
    "CREATE INDEX IF NOT EXISTS txs_actor ON txs (actor, leaf_index)",
    "CREATE INDEX IF NOT EXISTS txs_subject ON txs (subject_kind, subject_id, leaf_index)",
    "CREATE INDEX IF NOT EXISTS txs_ts ON txs (ts)",
    """CREATE TABLE IF NOT EXISTS nodes (
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS nonces (
        actor TEXT PRIMARY KEY,
        last_nonce INTEGER NOT NULL
    )""",
)

INSERT_BLOCK = (
    "INSERT INTO blocks (height, block_hash, log_size, log_root, time, data, checkpoint) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_TX = (
    "INSERT INTO txs (tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
    "nonce, leaf, tx_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Plain INSERT on purpose: a tree node is written exactly once; a second write of the
# same (level, idx) means the caller's tree bookkeeping is wrong, so it must fail.
INSERT_NODE = "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)"
# Max wins: a block never lowers an actor's nonce, whatever the caller passes.
UPSERT_NONCE = (
    "INSERT INTO nonces (actor, last_nonce) VALUES (?, ?) "
    "ON CONFLICT (actor) DO UPDATE SET last_nonce = max(last_nonce, excluded.last_nonce)"
)


def tx_key(tx_id: str) -> int:
    """The indexed stand-in for a tx id: the first 8 bytes of SHA-256 of its text, as a
    signed 64-bit integer (SQLite's INTEGER). Hashing the text, rather than decoding the
    hex, gives every string a key, so a lookup of a malformed id simply finds nothing."""
    return int.from_bytes(hashlib.sha256(tx_id.encode()).digest()[:8], "big", signed=True)


def tx_row(tx: TxRecord, key: int) -> tuple[Any, ...]:
    """The INSERT_TX parameters of ``tx``; ``key`` is its ``tx_key`` (computed once, by
    ``check_new_ids``)."""
    return (
        tx.tx_id,
        tx.leaf_index,
        tx.height,
        tx.type,
        tx.actor,
        tx.subject_kind,
        tx.subject_id,
        tx.ts,
        tx.nonce,
        bytes(tx.leaf),
        key,
    )


def migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Rebuild ``txs`` without the UNIQUE tx_id text index and with ``tx_key``, inside the
    caller's transaction (a crash leaves schema 1 intact). SQLite cannot drop a UNIQUE
    constraint in place, hence copy, drop, rename; the schema's CREATE INDEX statements
    then build the indexes of schema 2."""
    conn.create_function("opsledger_tx_key", 1, tx_key, deterministic=True)
    conn.execute(_CREATE_TXS.format(name="txs_v2"))
    conn.execute(
        "INSERT INTO txs_v2 (leaf_index, tx_id, tx_key, height, type, actor, subject_kind, "
        "subject_id, ts, nonce, leaf) SELECT leaf_index, tx_id, opsledger_tx_key(tx_id), "
        "height, type, actor, subject_kind, subject_id, ts, nonce, leaf FROM txs "
        "ORDER BY leaf_index"
    )
    conn.execute("DROP TABLE txs")  # and with it the schema 1 indexes
    conn.execute("ALTER TABLE txs_v2 RENAME TO txs")


def check_new_ids(
    conn: sqlite3.Connection, block: BlockRecord, txs: Sequence[TxRecord]
) -> list[int]:
    """Refuse a tx id already stored or repeated within the block: what the UNIQUE index
    did in schema 1, now one indexed probe per tx. Returns the txs' ``tx_key`` values,
    for the insert."""
    seen: set[str] = set()
    for tx in txs:
        if tx.tx_id in seen:
            raise StorageError(
                f"block {block.height}: tx {tx.tx_id} appears twice",
                height=block.height,
                tx_id=tx.tx_id,
            )
        seen.add(tx.tx_id)
    keys = [tx_key(tx.tx_id) for tx in txs]
    for start in range(0, len(keys), _KEY_PROBE):
        part = keys[start : start + _KEY_PROBE]
        marks = ", ".join("?" * len(part))
        sql = f"SELECT tx_id FROM txs WHERE tx_key IN ({marks})"  # noqa: S608 (placeholders only)
        for (stored,) in conn.execute(sql, part):
            if stored in seen:
                raise StorageError(
                    f"block {block.height}: tx {stored} is already stored",
                    height=block.height,
                    tx_id=stored,
                )
    return keys
