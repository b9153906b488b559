"""``verify``: a whole ledger re-checked; any flipped byte of stored evidence is found
and located at its block."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsledger.app.bundle import verify_home_store
from opsledger.core import VerificationFailed
from opsledger.store import SqliteStore

from .conftest import Ledger, fails, ok, ok_json, run


def test_verify_ok(ledger: Ledger) -> None:
    result = ok_json(ledger.path, "verify")
    assert result["ok"] is True
    assert (result["height"], result["log_size"], result["transactions"]) == (4, 22, 22)
    assert result["genesis_hash"] == ledger.genesis
    out = ok(ledger.path, "verify").stdout
    assert "ok" in out and ledger.genesis in out and "22" in out


def test_verify_with_a_pinned_genesis(ledger: Ledger) -> None:
    assert ok_json(ledger.path, "verify", "--genesis", ledger.genesis)["genesis_pinned"] is True
    message = fails(ledger.path, "verify", "--genesis", "0" * 64, code=1)
    assert message.startswith("verification failed: block 0: genesis does not match")
    assert run(ledger.path, "verify", "--genesis", "xyz").exit_code == 2


def _db(ledger: Ledger) -> Path:
    return ledger.path / "ledger.db"


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _update(db: Path, sql: str, *params: object) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute(sql, params)
        con.commit()
    finally:
        con.close()


def _flip(value: bytes, pos: int, mask: int = 0x01) -> bytes:
    changed = bytearray(value)
    changed[pos] ^= mask
    return bytes(changed)


def _positions(length: int, rng: random.Random, count: int) -> list[int]:
    """The first and last bytes (framing, padding bits of base64) and a random sample."""
    edges = [0, 1, length // 2, length - 3, length - 2, length - 1]
    return sorted(set(edges + rng.sample(range(length), min(count, length))))


def _expect_failure(db: Path, height: int) -> VerificationFailed:
    store = SqliteStore(db)  # no initialize(): nothing to create, and no write per case
    try:
        with pytest.raises(VerificationFailed) as caught:
            verify_home_store(store)
    finally:
        store.close()
    assert caught.value.details.get("height") == height, caught.value.message
    return caught.value


def _tamper_cases(
    ledger: Ledger,
) -> Iterator[tuple[str, int, str, tuple[Any, ...], tuple[Any, ...]]]:
    """(what, expected height, UPDATE statement, tampered params, restoring params)."""
    rng = random.Random(1234)
    db = _db(ledger)
    for height, data, note in _rows(db, "SELECT height, data, checkpoint FROM blocks"):
        for pos in _positions(len(data), rng, 14):
            yield (
                "blocks.data",
                height,
                "UPDATE blocks SET data = ? WHERE height = ?",
                (_flip(data, pos), height),
                (data, height),
            )
        raw = note.encode()
        for pos in _positions(len(raw), rng, 14):
            flipped = _flip(raw, pos).decode()  # 0x01 keeps this UTF-8 valid
            yield (
                "blocks.checkpoint",
                height,
                "UPDATE blocks SET checkpoint = ? WHERE height = ?",
                (flipped, height),
                (note, height),
            )
    rows = _rows(db, "SELECT leaf_index, height, leaf FROM txs")
    for leaf_index, height, leaf in rows[::3] + rows[-1:]:
        for pos in _positions(len(leaf), rng, 4):
            yield (
                "txs.leaf",
                height,
                "UPDATE txs SET leaf = ? WHERE leaf_index = ?",
                (_flip(leaf, pos, 0x20), leaf_index),
                (leaf, leaf_index),
            )


def test_any_flipped_byte_is_found_at_its_block(ledger: Ledger) -> None:
    db = _db(ledger)
    count = 0
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")  # a test copy: no need to fsync each flip
    try:
        for what, height, sql, tampered, original in _tamper_cases(ledger):
            con.execute(sql, tampered)
            try:
                _expect_failure(db, height)
            except AssertionError as exc:
                raise AssertionError(f"{what} at height {height}: {exc}") from exc
            con.execute(sql, original)
            count += 1
    finally:
        con.close()
    assert count > 250
    assert ok_json(ledger.path, "verify")["ok"] is True  # everything was restored


def test_tampered_leaf_through_the_cli(ledger: Ledger) -> None:
    db = _db(ledger)
    tx_id = next(t for t, h in ledger.tx_heights.items() if h == 3)
    (leaf,) = _rows(db, f"SELECT leaf FROM txs WHERE tx_id = '{tx_id}'")[0]
    _update(db, "UPDATE txs SET leaf = ? WHERE tx_id = ?", _flip(leaf, 40), tx_id)
    result = run(ledger.path, "verify")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("error: verification failed: block 3: ")
    assert tx_id in line
    assert "Traceback" not in result.stderr and "\n" not in line
    result = run(ledger.path, "verify", "--json")
    assert result.exit_code == 1
    outcome = json.loads(result.stdout)
    assert outcome["ok"] is False and outcome["height"] == 3 and outcome["tx_id"] == tx_id
    assert outcome["reason"]


def test_tampered_checkpoint_through_the_cli(ledger: Ledger) -> None:
    db = _db(ledger)
    (note,) = _rows(db, "SELECT checkpoint FROM blocks WHERE height = 2")[0]
    _update(db, "UPDATE blocks SET checkpoint = ? WHERE height = 2", note.replace("\n", "\n ", 1))
    assert fails(ledger.path, "verify", code=1).startswith("verification failed: block 2:")


def test_checkpoint_stored_as_bytes_is_a_failure_not_a_crash(ledger: Ledger) -> None:
    db = _db(ledger)
    (note,) = _rows(db, "SELECT checkpoint FROM blocks WHERE height = 1")[0]
    _update(db, "UPDATE blocks SET checkpoint = ? WHERE height = 1", note.encode())
    assert fails(ledger.path, "verify", code=1).startswith("verification failed: block 1:")


def test_tampered_index_column_is_found(ledger: Ledger) -> None:
    _update(_db(ledger), "UPDATE txs SET actor = 'node' WHERE leaf_index = 9")
    assert "block 2" in fails(ledger.path, "verify", code=1)


def test_missing_block_is_found(ledger: Ledger) -> None:
    _update(_db(ledger), "DELETE FROM txs WHERE height = 4")
    _update(_db(ledger), "DELETE FROM blocks WHERE height = 2")
    assert fails(ledger.path, "verify", code=1).startswith("verification failed: block 2:")


def test_block_bytes_must_be_canonical(ledger: Ledger) -> None:
    """Whitespace changes the stored bytes but not the block hash (which covers the
    re-encoded header): the core verifier accepts it, ``verify`` must not."""
    db = _db(ledger)
    (data,) = _rows(db, "SELECT data FROM blocks WHERE height = 2")[0]
    _update(db, "UPDATE blocks SET data = ? WHERE height = 2", data.replace(b":", b": ", 1))
    message = fails(ledger.path, "verify", code=1)
    assert message == "verification failed: block 2: block bytes are not canonical"


# -- what the signed bytes do not cover: the store's own derived data ------------------


def test_a_wrong_lookup_key_is_found(ledger: Ledger) -> None:
    """``tx_key`` finds a transaction by id; a wrong one would hide it from ``show``."""
    (tx_id,) = _rows(_db(ledger), "SELECT tx_id FROM txs WHERE leaf_index = 6")[0]
    _update(_db(ledger), "UPDATE txs SET tx_key = tx_key + 1 WHERE leaf_index = 6")
    message = fails(ledger.path, "verify", code=1)
    assert "wrong lookup key" in message and tx_id in message


def test_a_transaction_past_the_head_is_found(ledger: Ledger) -> None:
    db = _db(ledger)
    _update(
        db,
        "INSERT INTO txs (leaf_index, tx_id, tx_key, height, type, actor, subject_kind, "
        "subject_id, ts, nonce, leaf) SELECT 108, tx_id || 'x', tx_key, height, type, actor, "
        "subject_kind, subject_id, ts, nonce, leaf FROM txs WHERE leaf_index = 5",
    )
    message = fails(ledger.path, "verify", code=1)
    assert message.startswith("verification failed: block 4: the store holds transactions past")


def test_a_lowered_nonce_is_found(ledger: Ledger) -> None:
    """Admission reads the stored last nonces: a lowered one would admit a replay."""
    (actor, nonce) = _rows(_db(ledger), "SELECT actor, last_nonce FROM nonces LIMIT 1")[0]
    _update(_db(ledger), "UPDATE nonces SET last_nonce = 1 WHERE actor = ?", actor)
    message = fails(ledger.path, "verify", code=1)
    assert f"last nonce of actor {actor!r} is 1; the ledger says {nonce}" in message


def test_a_wrong_tree_node_is_found(ledger: Ledger) -> None:
    """Proofs are built from the stored tree nodes: a wrong one is found by verify, not
    only when someone asks for a proof."""
    _update(_db(ledger), "UPDATE nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 3")
    message = fails(ledger.path, "verify", code=1)
    assert "stored Merkle tree node (level 1, index 3)" in message


def test_a_missing_block_at_the_head_is_found(ledger: Ledger) -> None:
    """A walk that ends early (a damaged or deleted block) must not pass as a shorter
    ledger."""
    db = _db(ledger)
    _update(db, "PRAGMA foreign_keys = OFF")
    con = sqlite3.connect(db)
    try:
        con.execute("DELETE FROM blocks WHERE height = 2")  # foreign keys off by default
        con.commit()
    finally:
        con.close()
    message = fails(ledger.path, "verify", code=1)
    assert message.startswith("verification failed: block 2:")


def test_a_malformed_block_row_is_one_clear_line(ledger: Ledger) -> None:
    _update(_db(ledger), "UPDATE blocks SET log_size = 'x' WHERE height = 3")
    message = fails(ledger.path, "verify", code=1)
    assert message.startswith("verification failed: block 3: stored data is malformed")


def test_a_damaged_index_page_is_found(ledger: Ledger) -> None:
    """A page that no read of verify touches (a query index) is still checked."""
    db = _db(ledger)
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        (root,) = con.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'txs_type'"
        ).fetchone()
    finally:
        con.close()
    with db.open("r+b") as f:  # scribble over the index's cells, kept at the page's end
        f.seek(root * page_size - 512)
        f.write(bytes(range(256)) * 2)
    message = fails(ledger.path, "verify", code=1)
    assert "the database file is damaged" in message
