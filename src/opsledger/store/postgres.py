"""PostgreSQL adapter (psycopg 3, sync API) for nodes that want a server database.

Why it is built the way it is:

* **One schema per ledger.** Every table lives in ``schema`` (created if missing) and each
  connection runs ``SET search_path`` to it, so several ledgers (or test runs) can share a
  database and ``drop()`` removes one cleanly.
* **Autocommit connections, explicit transactions.** Reads are single statements, each
  its own snapshot, so no connection idles inside a transaction. ``append_block`` opens
  one transaction, takes ``LOCK TABLE blocks IN EXCLUSIVE MODE`` (blocks other writers,
  even in other processes, but not readers), re-checks the head, and loads rows with
  ``COPY``; readers see the block whole or not at all.
* **One writer connection behind a lock, one read connection per thread.** Read
  connections of ended threads are closed when a new reader appears; broken connections
  (server restart) are replaced on next use.
* **Text columns use ``COLLATE "C"``.** The type-prefix filter is a byte range
  (``'build.' <= type < 'build/'``) and timestamps compare as strings; locale collations
  ignore punctuation and would break both, and "C" lets B-tree indexes serve them.
* **Foreign exceptions are translated once**, in the public method that wraps each
  private one, into ``StorageError`` chained with ``from exc``. Messages name host, port,
  database and schema, never the password.

This module shares no SQL with the SQLite adapter on purpose: the dialects differ
(BYTEA, BIGINT, COPY, ``GREATEST``, ``unnest ... WITH ORDINALITY``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from opsledger.core.errors import ConfigError, InvalidInput, StorageError
from opsledger.store.base import BlockRecord, NodeId, TxQuery, TxRecord

__all__ = ["PostgresStore"]

Connection = psycopg.Connection[TupleRow]
Query = str | sql.SQL | sql.Composed

_PAGE = 1000
"""Rows fetched per statement by the iterators."""

_NODE_CHUNK = 10_000
"""Node ids per ``get_nodes`` statement (two arrays of this length)."""

# Column lists follow the dataclass field order, so ``Record(*row)`` builds a record.
# Statements are spelled out in full; only query_txs composes SQL, with ``psycopg.sql``.

_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT COLLATE "C" PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS blocks (
        height BIGINT PRIMARY KEY CHECK (height >= 0),
        block_hash TEXT NOT NULL,
        log_size BIGINT NOT NULL UNIQUE CHECK (log_size >= 0),
        log_root TEXT NOT NULL,
        "time" TEXT NOT NULL,
        data BYTEA NOT NULL,
        checkpoint TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS txs (
        leaf_index BIGINT PRIMARY KEY CHECK (leaf_index >= 0),
        tx_id TEXT COLLATE "C" NOT NULL UNIQUE,
        height BIGINT NOT NULL REFERENCES blocks (height),
        type TEXT COLLATE "C" NOT NULL,
        actor TEXT COLLATE "C" NOT NULL,
        subject_kind TEXT COLLATE "C" NOT NULL,
        subject_id TEXT COLLATE "C" NOT NULL,
        ts TEXT COLLATE "C" NOT NULL,
        nonce BIGINT NOT NULL,
        leaf BYTEA NOT NULL
    )""",
    # txs_in_block, and the index the foreign key wants on the referencing side.
    "CREATE INDEX IF NOT EXISTS txs_height_idx ON txs (height, leaf_index)",
    # One index per TxQuery filter, each ending in leaf_index so equality filters come
    # out in cursor order without a sort.
    "CREATE INDEX IF NOT EXISTS txs_type_idx ON txs (type, leaf_index)",
    "CREATE INDEX IF NOT EXISTS txs_actor_idx ON txs (actor, leaf_index)",
    "CREATE INDEX IF NOT EXISTS txs_subject_idx ON txs (subject_kind, subject_id, leaf_index)",
    "CREATE INDEX IF NOT EXISTS txs_ts_idx ON txs (ts)",
    """CREATE TABLE IF NOT EXISTS nodes (
        level INTEGER NOT NULL,
        idx BIGINT NOT NULL,
        hash BYTEA NOT NULL,
        PRIMARY KEY (level, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS nonces (
        actor TEXT COLLATE "C" PRIMARY KEY,
        last_nonce BIGINT NOT NULL
    )""",
)

_COPY_TXS = (
    "COPY txs (tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, nonce, "
    "leaf) FROM STDIN"
)
# Plain COPY (no ON CONFLICT) on purpose: a tree node is written exactly once; a second
# write of the same (level, idx) means the caller's tree bookkeeping is wrong.
_COPY_NODES = "COPY nodes (level, idx, hash) FROM STDIN"
# Max wins: a block never lowers an actor's nonce, whatever the caller passes.
_UPSERT_NONCE = (
    "INSERT INTO nonces (actor, last_nonce) VALUES (%s, %s) ON CONFLICT (actor) "
    "DO UPDATE SET last_nonce = GREATEST(nonces.last_nonce, EXCLUDED.last_nonce)"
)


def _block(row: Sequence[Any]) -> BlockRecord:
    return BlockRecord(*row)


def _tx(row: Sequence[Any]) -> TxRecord:
    return TxRecord(*row)


def _describe(dsn: str) -> str:
    """``user@host:port/dbname`` for messages: everything useful, never the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ConfigError("the PostgreSQL DSN cannot be parsed", key="dsn") from exc
    host = info.get("host") or info.get("hostaddr") or "localhost"
    port = info.get("port") or "5432"
    user = info.get("user")
    where = f"{host}:{port}/{info.get('dbname') or user or ''}"
    return f"{user}@{where}" if user else where


class PostgresStore:
    """``LedgerStore`` in one PostgreSQL schema.

    Thread rules: any number of threads may read, each on its own connection (so count
    one server connection per reading thread plus one for the writer against
    ``max_connections``); writes (``append_block``, ``set_meta``, ``initialize``,
    ``drop``) are serialised by an internal lock.
    """

    def __init__(self, dsn: str, schema: str = "opsledger") -> None:
        if not schema:
            raise ConfigError("the PostgreSQL schema name is empty", key="schema")
        self._dsn = dsn
        self._schema = schema
        self._where = f"{_describe(dsn)} schema {schema}"
        self._write_lock = threading.Lock()
        self._writer: Connection | None = None
        self._local = threading.local()
        self._readers_lock = threading.Lock()
        self._readers: list[tuple[weakref.ref[threading.Thread], Connection]] = []
        self._closed = False

    @property
    def schema(self) -> str:
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------

    def _connect(self) -> Connection:
        conn = psycopg.connect(self._dsn, autocommit=True)
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"the store ({self._where}) is closed")

    def _writer_conn(self) -> Connection:
        """The one write connection; callers hold ``_write_lock``."""
        self._check_open()
        if self._writer is not None and (self._writer.closed or self._writer.broken):
            self._writer.close()
            self._writer = None
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    def _reader(self) -> Connection:
        """This thread's read connection, opened on first use and replaced if broken."""
        self._check_open()
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.closed or conn.broken):
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect()
            with self._readers_lock:
                self._close_dead_readers()
                self._readers.append((weakref.ref(threading.current_thread()), conn))
            self._local.conn = conn
        return conn

    def _close_dead_readers(self) -> None:
        """Close connections whose thread ended or that are closed; holds ``_readers_lock``."""
        alive: list[tuple[weakref.ref[threading.Thread], Connection]] = []
        for ref, conn in self._readers:
            thread = ref()
            if thread is not None and thread.is_alive() and not conn.closed:
                alive.append((ref, conn))
            else:
                conn.close()
        self._readers = alive

    def _fetchone(self, query: Query, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self._reader().execute(query, params).fetchone()

    def _fetchall(self, query: Query, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._reader().execute(query, params).fetchall()

    # -- lifecycle ------------------------------------------------------------------

    def initialize(self) -> None:
        """Create the schema, tables and indexes if missing. Idempotent."""
        try:
            self._initialize()
        except psycopg.Error as exc:
            raise StorageError(f"initialising {self._where} failed: {exc}") from exc

    def _initialize(self) -> None:
        with self._write_lock:
            conn = self._writer_conn()
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
                # Re-point the search path now that the schema surely exists.
                conn.execute(
                    sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self._schema))
                )
                for statement in _SCHEMA:
                    conn.execute(statement)

    def drop(self) -> None:
        """Drop the whole schema with everything in it (tests use this to clean up)."""
        try:
            self._drop()
        except psycopg.Error as exc:
            raise StorageError(f"dropping {self._where} failed: {exc}") from exc

    def _drop(self) -> None:
        with self._write_lock:
            self._writer_conn().execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self._schema))
            )

    def close(self) -> None:
        """Close every connection. Idempotent; later calls raise ``StorageError``."""
        try:
            self._close()
        except psycopg.Error as exc:
            raise StorageError(f"closing {self._where} failed: {exc}") from exc

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
        except psycopg.Error as exc:
            raise StorageError(f"reading meta {key!r} failed: {exc}", key=key) from exc

    def _get_meta(self, key: str) -> str | None:
        row = self._fetchone("SELECT value FROM meta WHERE key = %s", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._set_meta(key, value)
        except psycopg.Error as exc:
            raise StorageError(f"writing meta {key!r} failed: {exc}", key=key) from exc

    def _set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self._writer_conn().execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
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
        """Store a block with its txs, tree nodes and nonces in one transaction.

        Raises ``StorageError`` with nothing stored when the block does not extend the
        head: wrong height, leaf indexes not contiguous from the current count, a tx of
        another height, ``log_size`` not the new count, or any unique key (tx id, leaf
        index, node) already taken. Durable on return as far as the server's
        ``synchronous_commit`` promises (on by default).
        """
        try:
            self._append_block(block, txs, nodes, nonces)
        except psycopg.Error as exc:
            raise StorageError(
                f"storing block {block.height} in {self._where} failed: {exc}",
                height=block.height,
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
            with conn.transaction(), conn.cursor() as cur:
                # Serialises writers (also across processes) until COMMIT; readers, which
                # take ACCESS SHARE, are not blocked.
                cur.execute("LOCK TABLE blocks IN EXCLUSIVE MODE")
                self._check_extends(cur, block, txs)
                cur.execute(
                    'INSERT INTO blocks (height, block_hash, log_size, log_root, "time", data, '
                    "checkpoint) VALUES (%s, %s, %s, %s, %s, %s, %s)",
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
                if txs:
                    with cur.copy(_COPY_TXS) as copy:
                        for tx in txs:
                            copy.write_row(
                                (
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
                                )
                            )
                if nodes:
                    with cur.copy(_COPY_NODES) as copy:
                        for level, idx, hash_ in nodes:
                            copy.write_row((level, idx, bytes(hash_)))
                if nonces:
                    cur.executemany(_UPSERT_NONCE, sorted(nonces.items()))

    @staticmethod
    def _check_extends(
        cur: psycopg.Cursor[TupleRow], block: BlockRecord, txs: Sequence[TxRecord]
    ) -> None:
        row = cur.execute("SELECT height FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        expected_height = 0 if row is None else int(row[0]) + 1
        if block.height != expected_height:
            raise StorageError(
                f"block {block.height} does not extend the head: expected height {expected_height}",
                height=block.height,
                expected=expected_height,
            )
        count_row = cur.execute("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM txs").fetchone()
        count = 0 if count_row is None else int(count_row[0])
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
        if block.log_size != count + len(txs):
            raise StorageError(
                f"block {block.height} has log_size {block.log_size}, expected {count + len(txs)}",
                height=block.height,
                expected=count + len(txs),
            )

    # -- reads ----------------------------------------------------------------------

    def head(self) -> BlockRecord | None:
        try:
            return self._head()
        except psycopg.Error as exc:
            raise StorageError(f"reading the head block failed: {exc}") from exc

    def _head(self) -> BlockRecord | None:
        row = self._fetchone(
            'SELECT height, block_hash, log_size, log_root, "time", data, checkpoint '
            "FROM blocks ORDER BY height DESC LIMIT 1"
        )
        return None if row is None else _block(row)

    def get_block(self, height: int) -> BlockRecord | None:
        try:
            return self._get_block(height)
        except psycopg.Error as exc:
            raise StorageError(f"reading block {height} failed: {exc}", height=height) from exc

    def _get_block(self, height: int) -> BlockRecord | None:
        row = self._fetchone(
            'SELECT height, block_hash, log_size, log_root, "time", data, checkpoint '
            "FROM blocks WHERE height = %s",
            (height,),
        )
        return None if row is None else _block(row)

    def iter_blocks(self, start: int = 0, end: int | None = None) -> Iterator[BlockRecord]:
        """Blocks with start <= height < end; ``end=None`` means the head when called."""
        try:
            yield from self._iter_blocks(start, end)
        except psycopg.Error as exc:
            raise StorageError(f"reading blocks from {start} failed: {exc}") from exc

    def _iter_blocks(self, start: int, end: int | None) -> Iterator[BlockRecord]:
        if end is None:
            row = self._fetchone("SELECT MAX(height) FROM blocks")
            end = 0 if row is None or row[0] is None else int(row[0]) + 1
        cursor = max(start, 0)
        while cursor < end:
            # The connection is looked up per page: the consumer may resume us elsewhere.
            rows = self._fetchall(
                'SELECT height, block_hash, log_size, log_root, "time", data, checkpoint '
                "FROM blocks WHERE height >= %s AND height < %s "
                "ORDER BY height LIMIT %s",
                (cursor, end, _PAGE),
            )
            yield from map(_block, rows)
            if len(rows) < _PAGE:
                return
            cursor = int(rows[-1][0]) + 1

    def get_block_by_log_size(self, log_size: int) -> BlockRecord | None:
        try:
            return self._get_block_by_log_size(log_size)
        except psycopg.Error as exc:
            raise StorageError(
                f"reading the block with log_size {log_size} failed: {exc}", log_size=log_size
            ) from exc

    def _get_block_by_log_size(self, log_size: int) -> BlockRecord | None:
        row = self._fetchone(
            'SELECT height, block_hash, log_size, log_root, "time", data, checkpoint '
            "FROM blocks WHERE log_size = %s",
            (log_size,),
        )
        return None if row is None else _block(row)

    def get_tx(self, tx_id: str) -> TxRecord | None:
        try:
            return self._get_tx(tx_id)
        except psycopg.Error as exc:
            raise StorageError(f"reading tx {tx_id} failed: {exc}", tx_id=tx_id) from exc

    def _get_tx(self, tx_id: str) -> TxRecord | None:
        row = self._fetchone(
            "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
            "nonce, leaf FROM txs WHERE tx_id = %s",
            (tx_id,),
        )
        return None if row is None else _tx(row)

    def get_tx_by_leaf(self, leaf_index: int) -> TxRecord | None:
        try:
            return self._get_tx_by_leaf(leaf_index)
        except psycopg.Error as exc:
            raise StorageError(
                f"reading leaf {leaf_index} failed: {exc}", leaf_index=leaf_index
            ) from exc

    def _get_tx_by_leaf(self, leaf_index: int) -> TxRecord | None:
        row = self._fetchone(
            "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
            "nonce, leaf FROM txs WHERE leaf_index = %s",
            (leaf_index,),
        )
        return None if row is None else _tx(row)

    def iter_txs(self, start: int = 0, end: int | None = None) -> Iterator[TxRecord]:
        """Txs with start <= leaf_index < end; ``end=None`` means the count when called."""
        try:
            yield from self._iter_txs(start, end)
        except psycopg.Error as exc:
            raise StorageError(f"reading txs from leaf {start} failed: {exc}") from exc

    def _iter_txs(self, start: int, end: int | None) -> Iterator[TxRecord]:
        if end is None:
            end = self._count_txs()
        cursor = max(start, 0)
        while cursor < end:
            rows = self._fetchall(
                "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
                "nonce, leaf FROM txs WHERE leaf_index >= %s AND leaf_index < %s "
                "ORDER BY leaf_index LIMIT %s",
                (cursor, end, _PAGE),
            )
            yield from map(_tx, rows)
            if len(rows) < _PAGE:
                return
            cursor = int(rows[-1][1]) + 1

    def txs_in_block(self, height: int) -> list[TxRecord]:
        try:
            return self._txs_in_block(height)
        except psycopg.Error as exc:
            raise StorageError(
                f"reading the txs of block {height} failed: {exc}", height=height
            ) from exc

    def _txs_in_block(self, height: int) -> list[TxRecord]:
        rows = self._fetchall(
            "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
            "nonce, leaf FROM txs WHERE height = %s ORDER BY leaf_index",
            (height,),
        )
        return [_tx(row) for row in rows]

    def query_txs(self, query: TxQuery) -> list[TxRecord]:
        """Indexed lookups. ``subject_id`` needs ``subject_kind`` (``InvalidInput``
        otherwise): the subject index leads with the kind, and a subject id is only
        meaningful within its kind."""
        try:
            return self._query_txs(query)
        except psycopg.Error as exc:
            raise StorageError(f"querying txs failed: {exc}") from exc

    def _query_txs(self, query: TxQuery) -> list[TxRecord]:
        if query.subject_id is not None and query.subject_kind is None:
            raise InvalidInput("a subject_id filter needs subject_kind", field="subject_kind")
        if query.limit <= 0:
            return []
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        if query.type is not None:
            if query.type.endswith(".*"):
                # "build.*" -> 'build.' <= type < 'build/' ('/' follows '.' in "C" order).
                prefix = query.type[:-1]
                clauses.append(sql.SQL("type >= %s AND type < %s"))
                params += [prefix, prefix[:-1] + "/"]
            else:
                clauses.append(sql.SQL("type = %s"))
                params.append(query.type)
        if query.actor is not None:
            clauses.append(sql.SQL("actor = %s"))
            params.append(query.actor)
        if query.subject_kind is not None:
            clauses.append(sql.SQL("subject_kind = %s"))
            params.append(query.subject_kind)
        if query.subject_id is not None:
            clauses.append(sql.SQL("subject_id = %s"))
            params.append(query.subject_id)
        if query.since is not None:
            clauses.append(sql.SQL("ts >= %s"))
            params.append(query.since)
        if query.until is not None:
            clauses.append(sql.SQL("ts < %s"))
            params.append(query.until)
        if query.after is not None:
            clauses.append(
                sql.SQL("leaf_index < %s") if query.descending else sql.SQL("leaf_index > %s")
            )
            params.append(query.after)
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        order = sql.SQL("DESC") if query.descending else sql.SQL("ASC")
        params.append(query.limit)
        statement = sql.SQL(
            "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, "
            "nonce, leaf FROM txs{} ORDER BY leaf_index {} LIMIT %s"
        ).format(where, order)
        return [_tx(row) for row in self._fetchall(statement, params)]

    def count_txs(self) -> int:
        """The number of stored txs. ``append_block`` keeps leaf indexes contiguous from
        0, so this is MAX+1 (one index probe) rather than COUNT(*) (a full scan)."""
        try:
            return self._count_txs()
        except psycopg.Error as exc:
            raise StorageError(f"counting txs failed: {exc}") from exc

    def _count_txs(self) -> int:
        row = self._fetchone("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM txs")
        return 0 if row is None else int(row[0])

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        try:
            return self._get_nodes(ids)
        except psycopg.Error as exc:
            raise StorageError(f"reading tree nodes failed: {exc}") from exc

    def _get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        out: list[bytes] = []
        for start in range(0, len(ids), _NODE_CHUNK):
            chunk = ids[start : start + _NODE_CHUNK]
            # unnest ... WITH ORDINALITY keeps the asked order and duplicates; the LEFT
            # JOIN shows a missing node as NULL. One statement per chunk.
            rows = self._fetchall(
                "SELECT q.level, q.idx, n.hash "
                "FROM unnest(%s::integer[], %s::bigint[]) WITH ORDINALITY AS q (level, idx, pos) "
                "LEFT JOIN nodes AS n ON n.level = q.level AND n.idx = q.idx ORDER BY q.pos",
                ([level for level, _ in chunk], [idx for _, idx in chunk]),
            )
            for level, idx, hash_ in rows:
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
        except psycopg.Error as exc:
            raise StorageError(f"reading nonces failed: {exc}") from exc

    def _last_nonces(self) -> dict[str, int]:
        rows = self._fetchall("SELECT actor, last_nonce FROM nonces")
        return {str(actor): int(nonce) for actor, nonce in rows}

    def check_integrity(self) -> str | None:
        """Nothing to add: the schema keeps no derived lookup keys, and PostgreSQL checks
        its own pages (with data checksums on) as it reads them."""
        return None

    def size_bytes(self) -> int:
        """Heap, index and TOAST bytes of every table in the schema."""
        try:
            return self._size_bytes()
        except psycopg.Error as exc:
            raise StorageError(f"measuring {self._where} failed: {exc}") from exc

    def _size_bytes(self) -> int:
        row = self._fetchone(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c "
            "JOIN pg_namespace AS ns ON ns.oid = c.relnamespace "
            "WHERE ns.nspname = %s AND c.relkind = 'r'",
            (self._schema,),
        )
        return 0 if row is None else int(row[0])
