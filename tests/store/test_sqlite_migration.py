"""SQLite schema 1 files (ledgers written before the tx_key index) open as schema 2.

The schema 1 DDL below is a historical fixture, copied from the release that wrote it:
the migration must read files as they were, not as the code now creates them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from opsledger.core.errors import StorageError
from opsledger.store import SqliteStore, TxRecord

from .conftest import ChainBuilder
from .test_store_contract import _with_tx, assert_matches_chain

SCHEMA_1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE blocks (
        height INTEGER PRIMARY KEY CHECK (height >= 0),
        block_hash TEXT NOT NULL,
        log_size INTEGER NOT NULL UNIQUE CHECK (log_size >= 0),
        log_root TEXT NOT NULL,
        time TEXT NOT NULL,
        data BLOB NOT NULL,
        checkpoint TEXT NOT NULL
    )""",
    """CREATE TABLE txs (
        leaf_index INTEGER PRIMARY KEY CHECK (leaf_index >= 0),
        tx_id TEXT NOT NULL UNIQUE,
        height INTEGER NOT NULL REFERENCES blocks (height),
        type TEXT NOT NULL,
        actor TEXT NOT NULL,
        subject_kind TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        ts TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        leaf BLOB NOT NULL
    )""",
    "CREATE INDEX txs_height ON txs (height, leaf_index)",
    "CREATE INDEX txs_type ON txs (type, leaf_index)",
    "CREATE INDEX txs_actor ON txs (actor, leaf_index)",
    "CREATE INDEX txs_subject ON txs (subject_kind, subject_id, leaf_index)",
    "CREATE INDEX txs_ts ON txs (ts)",
    """CREATE TABLE nodes (
        level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID""",
    "CREATE TABLE nonces (actor TEXT PRIMARY KEY, last_nonce INTEGER NOT NULL)",
)


def _schema_1_row(t: TxRecord) -> tuple[object, ...]:
    return (
        *(t.leaf_index, t.tx_id, t.height, t.type, t.actor),
        *(t.subject_kind, t.subject_id, t.ts, t.nonce, t.leaf),
    )


def _write_schema_1(path: Path, chain: ChainBuilder, blocks: int) -> None:
    """A schema 1 file holding ``blocks`` blocks of the chain, written with plain SQL."""
    conn = sqlite3.connect(path)
    with conn:
        for statement in SCHEMA_1:
            conn.execute(statement)
        for _ in range(blocks):
            batch = chain.build(3)
            b = batch.block
            conn.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (b.height, b.block_hash, b.log_size, b.log_root, b.time, b.data, b.checkpoint),
            )
            conn.executemany(
                "INSERT INTO txs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_schema_1_row(t) for t in batch.txs],
            )
            conn.executemany("INSERT INTO nodes VALUES (?, ?, ?)", batch.nodes)
            conn.executemany("INSERT OR REPLACE INTO nonces VALUES (?, ?)", batch.nonces.items())
            chain.accept(batch)
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_a_schema_1_file_is_migrated_and_keeps_every_record(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    chain = ChainBuilder(seed=11)
    _write_schema_1(path, chain, blocks=4)

    store = SqliteStore(path)
    try:
        store.initialize()
        assert_matches_chain(store, chain)
        for tx in chain.txs:
            assert store.get_tx(tx.tx_id) == tx
        # Still one row per tx id after the migration: an old id is refused.
        bad = _with_tx(chain.build(3), 1, tx_id=chain.txs[0].tx_id)
        with pytest.raises(StorageError, match="already stored"):
            store.append_block(*bad.args())
        chain.extend(store, 3)
        assert_matches_chain(store, chain)
    finally:
        store.close()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "txs_key" in indexes
        assert "txs_height" not in indexes
        assert not any(name.startswith("sqlite_autoindex_txs") for name in indexes)
    finally:
        conn.close()


def test_a_failed_migration_leaves_schema_1_intact(tmp_path: Path) -> None:
    """A crash or error mid-migration must not leave a half-rebuilt table behind."""
    path = tmp_path / "old.db"
    chain = ChainBuilder(seed=12)
    _write_schema_1(path, chain, blocks=2)
    conn = sqlite3.connect(path)
    with conn:  # a stray table of the name the migration needs makes it fail midway
        conn.execute("CREATE TABLE txs_v2 (x)")
    conn.close()

    store = SqliteStore(path)
    with pytest.raises(StorageError):
        store.initialize()
    store.close()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM txs").fetchone()[0] == len(chain.txs)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(txs)")]
        assert "tx_key" not in columns
    finally:
        conn.close()


def test_an_id_that_is_not_hex_is_simply_not_found(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "l.db")
    try:
        store.initialize()
        ChainBuilder(seed=3).extend(store, 2)
        assert store.get_tx("not-a-tx-id") is None
        assert store.get_tx("") is None
    finally:
        store.close()
