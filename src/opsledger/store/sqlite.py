"""SQLite adapter: the embedded default store.

Why it is built the way it is:

* **WAL + ``synchronous=FULL``.** WAL lets API threads read while the committer writes;
  ``FULL`` fsyncs the WAL on every commit, so a block is acknowledged only once it would
  survive a power cut (``NORMAL`` could lose the last commits, which would let a node
  re-sequence leaves it already announced).
* **One write connection behind a lock, one read connection per thread.** SQLite
  serialises writers anyway; a single lock-guarded writer turns "database is locked"
  races into plain waiting. Read connections are thread-local (``threading.local``) so
  readers never contend on a Python lock and each statement sees a committed snapshot.
  Read connections are ``query_only`` so a bug cannot write through them.
* **Autocommit connections with explicit ``BEGIN IMMEDIATE``.** ``append_block`` takes the
  write lock up front, re-reads the head inside the transaction and inserts everything
  with ``executemany``; a reader therefore sees a block either whole or not at all.
* **Readers never hold a statement open across calls.** The iterators fetch pages by key,
  so a slow consumer cannot pin an old WAL snapshot and block checkpoints, and a
  generator may be resumed from another thread (as streaming responses do).
* **Indexes that stay small and local (schema 2).** Each block rewrites every index page
  it touches, in the WAL and again at checkpoint, so an index whose keys arrive in random
  order costs a page per row once it outgrows a block. The tx id, a random SHA-256, is
  therefore indexed by an 8-byte integer (``tx_key``, not unique) instead of its 64-char
  text under a UNIQUE constraint: about a fifth of the pages. Uniqueness is still
  enforced, by ``append_block`` looking the block's keys up first. The txs of a block are
  found by their leaf range (the block's ``log_size`` bounds it), so no (height) index is
  kept either. Measured here on 50,000 bench transactions (``bench/ledger.py``), the
  store's share of ingest fell from ~46 to ~28 µs per tx.
* **Foreign exceptions are translated once**, in the public method that wraps each
  private one, into ``StorageError`` chained with ``from exc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opsledger.core.errors import ConfigError, InvalidInput, StorageError
from opsledger.store.base import BlockRecord, NodeId, TxQuery, TxRecord
from opsledger.store.sqlite_schema import (
    INSERT_BLOCK,
    INSERT_NODE,
    INSERT_TX,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_TXS,
    UPSERT_NONCE,
    check_new_ids,
    migrate_1_to_2,
    tx_key,
    tx_row,
)

__all__ = ["SqliteStore"]

_WRITER_CACHE_KIB = 64 * 1024
"""Page cache of the write connection: the hot index pages of a growing ledger stay in
memory across blocks (SQLite's default of 2 MiB was exceeded at ~30,000 transactions, and
every block then re-read its index pages from the OS). Allocated only as used."""

_CHECKPOINT_PAGES = 8192
"""WAL size (pages, 32 MiB at 4 KiB) that triggers a checkpoint at commit; SQLite's default
is 1000. A checkpoint copies every distinct page in the WAL back into the database, and a
growing ledger dirties the same index pages block after block, so a longer WAL copies each
of them once instead of many times: replaying the 50,000-tx bench blocks here, store CPU
per tx fell from ~28 to ~22 µs. The price is an occasional longer commit (the checkpoint
itself) and up to this much WAL on disk."""

_PAGE = 512
"""Rows fetched per statement by the iterators."""

_NODE_CHUNK = 300
"""Node ids per ``get_nodes`` statement: 3 parameters each, far below SQLite's limit."""


def _block(row: Sequence[Any]) -> BlockRecord:
    return BlockRecord(*row)


def _tx(row: Sequence[Any]) -> TxRecord:
    return TxRecord(*row)


class SqliteStore:
    """``LedgerStore`` on one SQLite file (plus its ``-wal``/``-shm`` companions).

    Thread rules: any number of threads may read; writes (``append_block``, ``set_meta``,
    ``initialize``) are serialised by an internal lock, so there is no need for the caller
    to lock. Every thread that reads gets its own connection; connections of threads that
    have ended are closed the next time a new thread starts reading, and all are closed by
    ``close``. The file must be on a local disk (WAL needs shared memory).
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        text = str(path)
        if text in ("", ":memory:") or text.startswith("file:"):
            # Each connection to ":memory:" is a separate database, which would silently
            # give every reader thread an empty ledger.
            raise ConfigError(
                "SqliteStore needs a file path (not ':memory:' or a file: URI)", key="path"
            )
        self._path = Path(path)
        self._uri = self._path.absolute().as_uri()
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers_lock = threading.Lock()
        self._readers: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------

    def _connect(self, mode: str) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module must not open transactions behind our
        # back; we issue BEGIN IMMEDIATE / COMMIT ourselves. check_same_thread=False: the
        # writer is used from whichever thread holds the lock, and close() may run on any.
        conn = sqlite3.connect(
            f"{self._uri}?mode={mode}",
            uri=True,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed", path=str(self._path))

    def _writer_conn(self) -> sqlite3.Connection:
        """The one write connection; callers hold ``_write_lock``."""
        self._check_open()
        if self._writer is None:
            conn = self._connect("rwc")
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(
                        f"could not switch {self._path} to WAL mode (got {mode!r})",
                        path=str(self._path),
                    )
                conn.execute(f"PRAGMA cache_size = {-_WRITER_CACHE_KIB:d}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES:d}")
            except BaseException:
                conn.close()
                raise
            self._writer = conn
        return self._writer

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened on first use."""
        self._check_open()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # mode=rw: reading must never create an empty database file by accident.
            conn = self._connect("rw")
            conn.execute("PRAGMA query_only = ON")
            with self._readers_lock:
                self._close_dead_readers()
                self._readers.append((weakref.ref(threading.current_thread()), conn))
            self._local.conn = conn
        return conn

    def _close_dead_readers(self) -> None:
        """Close read connections whose thread has ended; callers hold ``_readers_lock``."""
        alive: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        for ref, conn in self._readers:
            thread = ref()
            if thread is not None and thread.is_alive():
                alive.append((ref, conn))
            else:
                conn.close()
        self._readers = alive

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Roll back after a failure; drop the writer if even that fails."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is in an unknown state: discard it, the next write reopens.
            self._writer = None
            conn.close()

    # -- lifecycle ------------------------------------------------------------------

    def initialize(self) -> None:
        """Create the file, tables and indexes if missing. Idempotent."""
        try:
            self._initialize()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(
                f"initialising SQLite store {self._path} failed: {exc}", path=str(self._path)
            ) from exc

    def _initialize(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            conn = self._writer_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read under the write lock: another process may have just migrated.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"{self._path} has schema version {version}; this opsledger knows "
                        f"only up to {SCHEMA_VERSION}",
                        path=str(self._path),
                    )
                if version == 1:
                    logging.getLogger(__name__).warning(
                        "upgrading %s to storage schema 2, once (about 2 s per 100,000 txs)",
                        self._path,
                    )
                    migrate_1_to_2(conn)
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise

    def close(self) -> None:
        """Close every connection. Idempotent; later calls raise ``StorageError``."""
        try:
            self._close()
        except sqlite3.Error as exc:
            raise StorageError(
                f"closing SQLite store {self._path} failed: {exc}", path=str(self._path)
            ) from exc

    def _close(self) -> None:
        with self._write_lock:
            self._closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        with self._readers_lock:
            readers, self._readers = self._readers, []
            for _, conn in readers:
                conn.close()

    # -- metadata -------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        try:
            return self._get_meta(key)
        except sqlite3.Error as exc:
            raise StorageError(f"reading meta {key!r} failed: {exc}", key=key) from exc

    def _get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._set_meta(key, value)
        except sqlite3.Error as exc:
            raise StorageError(f"writing meta {key!r} failed: {exc}", key=key) from exc

    def _set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            # A single autocommit statement is atomic and, with synchronous=FULL, durable.
            self._writer_conn().execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- the one write path ---------------------------------------------------------

    def append_block(
        self,
        block: BlockRecord,
        txs: Sequence[TxRecord],
        nodes: Sequence[tuple[int, int, bytes]],
        nonces: dict[str, int],
    ) -> None:
        """Store a block with its txs, tree nodes and nonces in one durable transaction.

        Raises ``StorageError`` with nothing stored when the block does not extend the
        head: wrong height, leaf indexes not contiguous from the current count, a tx of
        another height, ``log_size`` not the new count, or any unique key (tx id, leaf
        index, node) already taken.
        """
        try:
            self._append_block(block, txs, nodes, nonces)
        except sqlite3.Error as exc:
            raise StorageError(
                f"storing block {block.height} failed: {exc}", height=block.height
            ) from exc

    def _append_block(
        self,
        block: BlockRecord,
        txs: Sequence[TxRecord],
        nodes: Sequence[tuple[int, int, bytes]],
        nonces: dict[str, int],
    ) -> None:
        with self._write_lock:
            conn = self._writer_conn()
            # IMMEDIATE takes the write lock now, so the head we check below cannot move
            # (even under another process) before COMMIT.
            conn.execute("BEGIN IMMEDIATE")
            try:
                keys = self._check_extends(conn, block, txs)
                conn.execute(
                    INSERT_BLOCK,
                    (
                        block.height,
                        block.block_hash,
                        block.log_size,
                        block.log_root,
                        block.time,
                        bytes(block.data),
                        block.checkpoint,
                    ),
                )
                conn.executemany(INSERT_TX, map(tx_row, txs, keys))
                conn.executemany(INSERT_NODE, ((level, idx, bytes(h)) for level, idx, h in nodes))
                conn.executemany(UPSERT_NONCE, sorted(nonces.items()))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _check_extends(
        conn: sqlite3.Connection, block: BlockRecord, txs: Sequence[TxRecord]
    ) -> list[int]:
        """Raise unless the block extends the head; return the txs' lookup keys."""
        row = conn.execute(
            "SELECT height, log_size FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        expected_height = 0 if row is None else int(row[0]) + 1
        if block.height != expected_height:
            raise StorageError(
                f"block {block.height} does not extend the head: expected height {expected_height}",
                height=block.height,
                expected=expected_height,
            )
        count = int(conn.execute("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM txs").fetchone()[0])
        if row is not None and not txs:
            raise StorageError(
                f"block {block.height} has no transactions; its log_size {count} is already "
                f"the log_size of block {row[0]} (log_size is unique)",
                height=block.height,
            )
        for offset, tx in enumerate(txs):
            if tx.leaf_index != count + offset:
                raise StorageError(
                    f"block {block.height}: tx {tx.tx_id} has leaf index {tx.leaf_index}, "
                    f"expected {count + offset}",
                    height=block.height,
                    tx_id=tx.tx_id,
                    expected=count + offset,
                )
            if tx.height != block.height:
                raise StorageError(
                    f"block {block.height}: tx {tx.tx_id} claims height {tx.height}",
                    height=block.height,
                    tx_id=tx.tx_id,
                )
        keys = check_new_ids(conn, block, txs)
        if block.log_size != count + len(txs):
            raise StorageError(
                f"block {block.height} has log_size {block.log_size}, expected {count + len(txs)}",
                height=block.height,
                expected=count + len(txs),
            )
        return keys

    # -- reads ----------------------------------------------------------------------

    def head(self) -> BlockRecord | None:
        try:
            return self._head()
        except sqlite3.Error as exc:
            raise StorageError(f"reading the head block failed: {exc}") from exc

    def _head(self) -> BlockRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT height, block_hash, log_size, log_root, time, data, checkpoint "
                "FROM blocks ORDER BY height DESC LIMIT 1"
            )
            .fetchone()
        )
        return None if row is None else _block(row)

    def get_block(self, height: int) -> BlockRecord | None:
        try:
            return self._get_block(height)
        except sqlite3.Error as exc:
            raise StorageError(f"reading block {height} failed: {exc}", height=height) from exc

    def _get_block(self, height: int) -> BlockRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT height, block_hash, log_size, log_root, time, data, checkpoint "
                "FROM blocks WHERE height = ?",
                (height,),
            )
            .fetchone()
        )
        return None if row is None else _block(row)

    def iter_blocks(self, start: int = 0, end: int | None = None) -> Iterator[BlockRecord]:
        """Blocks with start <= height < end; ``end=None`` means the head when called."""
        try:
            yield from self._iter_blocks(start, end)
        except sqlite3.Error as exc:
            raise StorageError(f"reading blocks from {start} failed: {exc}") from exc

    def _iter_blocks(self, start: int, end: int | None) -> Iterator[BlockRecord]:
        if end is None:
            row = self._reader().execute("SELECT MAX(height) FROM blocks").fetchone()
            end = 0 if row[0] is None else int(row[0]) + 1
        cursor = max(start, 0)
        while cursor < end:
            # The connection is looked up per page: the consumer may resume us elsewhere.
            rows = (
                self._reader()
                .execute(
                    "SELECT height, block_hash, log_size, log_root, time, data, checkpoint "
                    "FROM blocks WHERE height >= ? AND height < ? "
                    "ORDER BY height LIMIT ?",
                    (cursor, end, _PAGE),
                )
                .fetchall()
            )
            yield from map(_block, rows)
            if len(rows) < _PAGE:
                return
            cursor = int(rows[-1][0]) + 1

    def get_block_by_log_size(self, log_size: int) -> BlockRecord | None:
        try:
            return self._get_block_by_log_size(log_size)
        except sqlite3.Error as exc:
            raise StorageError(
                f"reading the block with log_size {log_size} failed: {exc}", log_size=log_size
            ) from exc

    def _get_block_by_log_size(self, log_size: int) -> BlockRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT height, block_hash, log_size, log_root, time, data, checkpoint "
                "FROM blocks WHERE log_size = ?",
                (log_size,),
            )
            .fetchone()
        )
        return None if row is None else _block(row)

    def get_tx(self, tx_id: str) -> TxRecord | None:
        try:
            return self._get_tx(tx_id)
        except sqlite3.Error as exc:
            raise StorageError(f"reading tx {tx_id} failed: {exc}", tx_id=tx_id) from exc

    def _get_tx(self, tx_id: str) -> TxRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
                "nonce, leaf FROM txs WHERE tx_key = ? AND tx_id = ?",
                (tx_key(tx_id), tx_id),
            )
            .fetchone()
        )
        return None if row is None else _tx(row)

    def get_tx_by_leaf(self, leaf_index: int) -> TxRecord | None:
        try:
            return self._get_tx_by_leaf(leaf_index)
        except sqlite3.Error as exc:
            raise StorageError(
                f"reading leaf {leaf_index} failed: {exc}", leaf_index=leaf_index
            ) from exc

    def _get_tx_by_leaf(self, leaf_index: int) -> TxRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
                "nonce, leaf FROM txs WHERE leaf_index = ?",
                (leaf_index,),
            )
            .fetchone()
        )
        return None if row is None else _tx(row)

    def iter_txs(self, start: int = 0, end: int | None = None) -> Iterator[TxRecord]:
        """Txs with start <= leaf_index < end; ``end=None`` means the count when called."""
        try:
            yield from self._iter_txs(start, end)
        except sqlite3.Error as exc:
            raise StorageError(f"reading txs from leaf {start} failed: {exc}") from exc

    def _iter_txs(self, start: int, end: int | None) -> Iterator[TxRecord]:
        if end is None:
            end = self._count_txs()
        cursor = max(start, 0)
        while cursor < end:
            rows = (
                self._reader()
                .execute(
                    "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
                    "nonce, leaf FROM txs WHERE leaf_index >= ? AND leaf_index < ? "
                    "ORDER BY leaf_index LIMIT ?",
                    (cursor, end, _PAGE),
                )
                .fetchall()
            )
            yield from map(_tx, rows)
            if len(rows) < _PAGE:
                return
            cursor = int(rows[-1][1]) + 1

    def txs_in_block(self, height: int) -> list[TxRecord]:
        try:
            return self._txs_in_block(height)
        except sqlite3.Error as exc:
            raise StorageError(
                f"reading the txs of block {height} failed: {exc}", height=height
            ) from exc

    def _txs_in_block(self, height: int) -> list[TxRecord]:
        rows = (
            self._reader()
            .execute(
                "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
                "nonce, leaf FROM txs WHERE leaf_index >= coalesce("
                "(SELECT log_size FROM blocks WHERE height < ?1 ORDER BY height DESC LIMIT 1), 0) "
                "AND leaf_index < (SELECT log_size FROM blocks WHERE height = ?1) "
                "AND height = ?1 ORDER BY leaf_index",
                (height,),
            )
            .fetchall()
        )
        return [_tx(row) for row in rows]

    def query_txs(self, query: TxQuery) -> list[TxRecord]:
        """Indexed lookups. ``subject_id`` needs ``subject_kind`` (``InvalidInput``
        otherwise): the subject index leads with the kind, and a subject id is only
        meaningful within its kind."""
        try:
            return self._query_txs(query)
        except sqlite3.Error as exc:
            raise StorageError(f"querying txs failed: {exc}") from exc

    def _query_txs(self, query: TxQuery) -> list[TxRecord]:
        if query.subject_id is not None and query.subject_kind is None:
            raise InvalidInput("a subject_id filter needs subject_kind", field="subject_kind")
        if query.limit <= 0:
            return []  # SQLite reads LIMIT -1 as "no limit"; never return everything.
        clauses: list[str] = []
        params: list[Any] = []
        if query.type is not None:
            if query.type.endswith(".*"):
                # "build.*" -> 'build.' <= type < 'build/' ('/' follows '.'): a range the
                # (type, leaf_index) index serves, unlike LIKE under SQLite's defaults.
                prefix = query.type[:-1]
                clauses.append("type >= ? AND type < ?")
                params += [prefix, prefix[:-1] + "/"]
            else:
                clauses.append("type = ?")
                params.append(query.type)
        if query.actor is not None:
            clauses.append("actor = ?")
            params.append(query.actor)
        if query.subject_kind is not None:
            clauses.append("subject_kind = ?")
            params.append(query.subject_kind)
        if query.subject_id is not None:
            clauses.append("subject_id = ?")
            params.append(query.subject_id)
        if query.since is not None:
            clauses.append("ts >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("ts < ?")
            params.append(query.until)
        if query.after is not None:
            clauses.append("leaf_index < ?" if query.descending else "leaf_index > ?")
            params.append(query.after)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if query.descending else "ASC"
        params.append(query.limit)
        # Only fixed fragments are interpolated; every value is a bound parameter.
        sql = f"{SELECT_TXS}{where} ORDER BY leaf_index {order} LIMIT ?"
        return [_tx(row) for row in self._reader().execute(sql, params).fetchall()]

    def count_txs(self) -> int:
        """The number of stored txs. ``append_block`` keeps leaf indexes contiguous from
        0, so this is MAX+1 (one index probe) rather than COUNT(*) (a full scan)."""
        try:
            return self._count_txs()
        except sqlite3.Error as exc:
            raise StorageError(f"counting txs failed: {exc}") from exc

    def _count_txs(self) -> int:
        row = self._reader().execute("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM txs").fetchone()
        return int(row[0])

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        try:
            return self._get_nodes(ids)
        except sqlite3.Error as exc:
            raise StorageError(f"reading tree nodes failed: {exc}") from exc

    def _get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        out: list[bytes] = []
        for start in range(0, len(ids), _NODE_CHUNK):
            chunk = ids[start : start + _NODE_CHUNK]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            params = [x for pos, (level, idx) in enumerate(chunk) for x in (pos, level, idx)]
            # A LEFT JOIN from the asked list keeps its order and duplicates and shows a
            # missing node as NULL, in one statement per chunk.
            sql = (
                f"WITH q (pos, level, idx) AS (VALUES {values}) "  # noqa: S608 (placeholders only)
                "SELECT q.pos, q.level, q.idx, n.hash FROM q "
                "LEFT JOIN nodes AS n ON n.level = q.level AND n.idx = q.idx ORDER BY q.pos"
            )
            for _pos, level, idx, hash_ in self._reader().execute(sql, params).fetchall():
                if hash_ is None:
                    raise StorageError(
                        f"tree node (level {level}, index {idx}) is missing",
                        level=level,
                        index=idx,
                    )
                out.append(bytes(hash_))
        return out

    def last_nonces(self) -> dict[str, int]:
        try:
            return self._last_nonces()
        except sqlite3.Error as exc:
            raise StorageError(f"reading nonces failed: {exc}") from exc

    def _last_nonces(self) -> dict[str, int]:
        rows = self._reader().execute("SELECT actor, last_nonce FROM nonces").fetchall()
        return {str(actor): int(nonce) for actor, nonce in rows}

    def check_integrity(self) -> str | None:
        """SQLite's ``quick_check`` of every page and index, then every ``tx_key`` against
        its tx id: the key is derived data the signed bytes do not cover, and a wrong one
        would hide a transaction from ``get_tx`` and from the duplicate check."""
        try:
            return self._check_integrity()
        except sqlite3.Error as exc:
            return f"the database file cannot be read: {exc}"

    def _check_integrity(self) -> str | None:
        conn = self._reader()
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(1)")]
        if problems != ["ok"]:
            detail = " ".join(problems[0].replace("*** in database main ***", "").split())
            return f"the database file is damaged: {detail}"
        cursor = -1
        while True:
            rows = conn.execute(
                "SELECT leaf_index, height, tx_id, tx_key FROM txs WHERE leaf_index > ? "
                "ORDER BY leaf_index LIMIT ?",
                (cursor, _PAGE * 8),
            ).fetchall()
            for leaf_index, height, tx_id, key in rows:
                if not isinstance(tx_id, str) or key != tx_key(tx_id):
                    return f"block {height}: tx {tx_id} (leaf {leaf_index}) has a wrong lookup key"
            if len(rows) < _PAGE * 8:
                return None
            cursor = rows[-1][0]

    def size_bytes(self) -> int:
        """The database file plus its write-ahead log (not yet checkpointed pages)."""
        try:
            return self._size_bytes()
        except OSError as exc:
            raise StorageError(f"measuring {self._path} failed: {exc}") from exc

    def _size_bytes(self) -> int:
        total = 0
        for name in (str(self._path), f"{self._path}-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(name).st_size
        return total
