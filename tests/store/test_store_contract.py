"""The ``LedgerStore`` contract, run unchanged against SQLite and PostgreSQL.

Backend-specific checks (SQLite query plans, pragmas, reopening a file; URL parsing)
follow the shared suite at the end of the file.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsledger.core.errors import ConfigError, InvalidInput, StorageError
from opsledger.store import (
    LedgerStore,
    PostgresStore,
    SqliteStore,
    TxQuery,
    TxRecord,
    open_store,
)
from opsledger.store.factory import _split_schema

from .conftest import (
    PG_DSN,
    TYPES,
    Batch,
    ChainBuilder,
    StoreFactory,
    TxSpec,
    ts_for_leaf,
)


def snapshot(store: LedgerStore) -> tuple[object, ...]:
    """Everything observable about a store's contents, to compare before and after."""
    return (
        store.head(),
        store.count_txs(),
        list(store.iter_blocks()),
        list(store.iter_txs()),
        store.last_nonces(),
    )


def assert_matches_chain(store: LedgerStore, chain: ChainBuilder) -> None:
    """The store holds exactly what the builder accepted, through every read path."""
    assert store.head() == (chain.blocks[-1] if chain.blocks else None)
    assert store.count_txs() == len(chain.txs)
    assert list(store.iter_blocks()) == chain.blocks
    assert list(store.iter_txs()) == chain.txs
    for block in chain.blocks:
        assert store.get_block(block.height) == block
        assert store.get_block_by_log_size(block.log_size) == block
        assert store.txs_in_block(block.height) == [
            tx for tx in chain.txs if tx.height == block.height
        ]
    for tx in chain.txs:
        assert store.get_tx(tx.tx_id) == tx
        assert store.get_tx_by_leaf(tx.leaf_index) == tx
    ids = list(chain.hashes)
    assert store.get_nodes(ids) == [chain.hashes[i] for i in ids]
    assert store.last_nonces() == chain.nonces


# -- basics -----------------------------------------------------------------------------


def test_empty_store(store: LedgerStore) -> None:
    assert store.head() is None
    assert store.get_block(0) is None
    assert store.get_block_by_log_size(0) is None
    assert store.get_tx("00" * 32) is None
    assert store.get_tx_by_leaf(0) is None
    assert store.count_txs() == 0
    assert list(store.iter_blocks()) == []
    assert list(store.iter_txs()) == []
    assert store.txs_in_block(0) == []
    assert store.query_txs(TxQuery()) == []
    assert store.get_nodes([]) == []
    assert store.last_nonces() == {}
    assert store.get_meta("ledger_id") is None


def test_initialize_is_idempotent(store: LedgerStore, chain: ChainBuilder) -> None:
    chain.extend(store, 4)
    store.initialize()
    assert_matches_chain(store, chain)


def test_append_and_read_back_every_field(store: LedgerStore, chain: ChainBuilder) -> None:
    batch = chain.extend(store, 5)
    head = store.head()
    assert head == batch.block
    assert head is not None
    assert isinstance(head.data, bytes)
    for got, want in zip(store.iter_txs(), batch.txs, strict=True):
        for f in dataclasses.fields(TxRecord):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
        assert type(got.leaf) is bytes
    assert_matches_chain(store, chain)


def test_genesis_block_may_be_empty(store: LedgerStore, chain: ChainBuilder) -> None:
    chain.extend(store, 0)
    chain.extend(store, 2)
    assert_matches_chain(store, chain)
    assert store.get_block_by_log_size(0) == chain.blocks[0]


def test_multi_block_sequence(store: LedgerStore, chain: ChainBuilder) -> None:
    for n in (1, 7, 2, 16, 1, 9):
        chain.extend(store, n)
    assert_matches_chain(store, chain)


def test_iter_ranges(store: LedgerStore, chain: ChainBuilder) -> None:
    for n in (3, 4, 5, 6):
        chain.extend(store, n)
    assert [b.height for b in store.iter_blocks(1, 3)] == [1, 2]
    assert [b.height for b in store.iter_blocks(2)] == [2, 3]
    assert list(store.iter_blocks(3, 3)) == []
    assert list(store.iter_blocks(10)) == []
    assert [b.height for b in store.iter_blocks(0, 99)] == [0, 1, 2, 3]
    assert [t.leaf_index for t in store.iter_txs(5, 9)] == [5, 6, 7, 8]
    assert [t.leaf_index for t in store.iter_txs(15)] == [15, 16, 17]
    assert list(store.iter_txs(18)) == []
    assert list(store.iter_txs(4, 2)) == []


def test_iterators_page_through_many_rows(store: LedgerStore, chain: ChainBuilder) -> None:
    # More rows than one page of either backend, so the keyset paging is exercised.
    for _ in range(3):
        chain.extend(store, 700)
    assert [t.leaf_index for t in store.iter_txs()] == list(range(2100))
    assert [t.leaf_index for t in store.iter_txs(511, 1537)] == list(range(511, 1537))
    assert store.count_txs() == 2100


def test_iterator_end_is_fixed_when_called(store: LedgerStore, chain: ChainBuilder) -> None:
    chain.extend(store, 3)
    txs = store.iter_txs()
    blocks = store.iter_blocks()
    first_tx, first_block = next(txs), next(blocks)
    chain.extend(store, 3)
    assert [first_tx, *txs] == chain.txs[:3]
    assert [first_block, *blocks] == chain.blocks[:1]


def test_meta_get_set(store: LedgerStore) -> None:
    assert store.get_meta("origin") is None
    store.set_meta("origin", "opsledger.example/log")
    store.set_meta("node", "n1 — ünïcode")
    assert store.get_meta("origin") == "opsledger.example/log"
    store.set_meta("origin", "changed")
    assert store.get_meta("origin") == "changed"
    assert store.get_meta("node") == "n1 — ünïcode"


def test_size_bytes_grows(store: LedgerStore, chain: ChainBuilder) -> None:
    before = store.size_bytes()
    assert before >= 0
    for _ in range(3):
        chain.extend(store, 200)
    assert store.size_bytes() > before


def test_closed_store_refuses_work(store: LedgerStore, chain: ChainBuilder) -> None:
    chain.extend(store, 1)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError):
        store.head()
    with pytest.raises(StorageError):
        store.append_block(*chain.build(1).args())


# -- refusals ---------------------------------------------------------------------------


def _set_height(batch: Batch, height: int) -> Batch:
    return dataclasses.replace(
        batch,
        block=dataclasses.replace(batch.block, height=height),
        txs=[dataclasses.replace(t, height=height) for t in batch.txs],
    )


def _shift_leaves(batch: Batch, by: int) -> Batch:
    return dataclasses.replace(
        batch,
        block=dataclasses.replace(batch.block, log_size=batch.block.log_size + by),
        txs=[dataclasses.replace(t, leaf_index=t.leaf_index + by) for t in batch.txs],
    )


def _with_tx(batch: Batch, i: int, **changes: object) -> Batch:
    txs = list(batch.txs)
    txs[i] = dataclasses.replace(txs[i], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(batch, txs=txs)


BAD_BATCHES: dict[str, Callable[[Batch, ChainBuilder], Batch]] = {
    "height gap": lambda b, c: _set_height(b, b.block.height + 1),
    "duplicate height": lambda b, c: _set_height(b, b.block.height - 1),
    "leaf gap": lambda b, c: _shift_leaves(b, 1),
    "duplicate leaf index (existing)": lambda b, c: _shift_leaves(b, -1),
    "duplicate leaf index (in block)": lambda b, c: _with_tx(b, 1, leaf_index=b.txs[0].leaf_index),
    "duplicate tx id (existing)": lambda b, c: _with_tx(b, 2, tx_id=c.txs[0].tx_id),
    "duplicate tx id (in block)": lambda b, c: _with_tx(b, 2, tx_id=b.txs[0].tx_id),
    "wrong log_size": lambda b, c: b.replace_block(log_size=b.block.log_size + 1),
    "duplicate log_size": lambda b, c: b.replace_block(log_size=c.size),
    "tx of another height": lambda b, c: _with_tx(b, 1, height=b.block.height - 1),
    "existing tree node": lambda b, c: dataclasses.replace(
        b, nodes=[*b.nodes, (0, 0, c.hashes[(0, 0)])]
    ),
    "tree node twice": lambda b, c: dataclasses.replace(b, nodes=[*b.nodes, b.nodes[-1]]),
    "empty block after genesis": lambda b, c: dataclasses.replace(
        b, txs=[], nodes=[], block=dataclasses.replace(b.block, log_size=c.size)
    ),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_refuses_bad_block_and_stores_nothing(
    store: LedgerStore, chain: ChainBuilder, case: str
) -> None:
    chain.extend(store, 4)
    chain.extend(store, 3)
    good = chain.build(3)
    bad = BAD_BATCHES[case](good, chain)
    before = snapshot(store)
    with pytest.raises(StorageError):
        store.append_block(*bad.args())
    assert snapshot(store) == before
    assert store.get_tx(good.txs[0].tx_id) is None
    with pytest.raises(StorageError):
        store.get_nodes([(0, good.txs[0].leaf_index)])
    # The writer is usable afterwards (no transaction left open).
    store.append_block(*good.args())
    chain.accept(good)
    assert_matches_chain(store, chain)


def test_constraint_violation_is_translated_once(store: LedgerStore, chain: ChainBuilder) -> None:
    """A key the database itself refuses (a tree node written twice) surfaces as one
    ``StorageError`` chained to the driver's own error."""
    chain.extend(store, 2)
    good = chain.build(2)
    bad = dataclasses.replace(good, nodes=[*good.nodes, good.nodes[-1]])
    with pytest.raises(StorageError) as info:
        store.append_block(*bad.args())
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError | psycopg.IntegrityError)
    assert info.value.details["height"] == 1


def test_first_block_must_be_height_zero(store: LedgerStore, chain: ChainBuilder) -> None:
    bad = _set_height(chain.build(2), 1)
    with pytest.raises(StorageError, match="expected height 0"):
        store.append_block(*bad.args())
    assert store.head() is None
    assert store.count_txs() == 0


# -- queries ----------------------------------------------------------------------------


def expected(txs: list[TxRecord], q: TxQuery) -> list[TxRecord]:
    """The reference semantics of ``TxQuery``, as a plain filter over all transactions."""

    def keep(t: TxRecord) -> bool:
        if q.type is not None:
            if q.type.endswith(".*"):
                if not t.type.startswith(q.type[:-1]):
                    return False
            elif t.type != q.type:
                return False
        checks = (
            (q.actor, t.actor),
            (q.subject_kind, t.subject_kind),
            (q.subject_id, t.subject_id),
        )
        if any(want is not None and want != got for want, got in checks):
            return False
        if q.since is not None and t.ts < q.since:
            return False
        if q.until is not None and t.ts >= q.until:
            return False
        if q.after is not None:
            return t.leaf_index < q.after if q.descending else t.leaf_index > q.after
        return True

    out = [t for t in txs if keep(t)]
    if q.descending:
        out.reverse()
    return out[: max(q.limit, 0)]


QUERIES = {
    "all": TxQuery(limit=1000),
    "default limit": TxQuery(),
    "limit 5": TxQuery(limit=5),
    "limit 0": TxQuery(limit=0),
    "descending": TxQuery(descending=True, limit=7),
    "exact type": TxQuery(type="build.started"),
    "exact type without dot": TxQuery(type="build"),
    "type prefix": TxQuery(type="build.*"),
    "nested type prefix": TxQuery(type="build.step.*"),
    "type prefix, nothing": TxQuery(type="nothing.*"),
    "unknown type": TxQuery(type="no.such.type"),
    "actor": TxQuery(actor="bob"),
    "subject kind": TxQuery(subject_kind="service"),
    "subject": TxQuery(subject_kind="service", subject_id="api"),
    "subject other kind": TxQuery(subject_kind="artifact", subject_id="api"),
    "since": TxQuery(since=ts_for_leaf(30)),
    "until": TxQuery(until=ts_for_leaf(31)),
    "time range": TxQuery(since=ts_for_leaf(11), until=ts_for_leaf(40)),
    "empty time range": TxQuery(since=ts_for_leaf(20), until=ts_for_leaf(20)),
    "after": TxQuery(after=40),
    "after descending": TxQuery(after=40, descending=True),
    "combined": TxQuery(type="build.*", actor="alice", since=ts_for_leaf(4), limit=1000),
    "combined descending": TxQuery(
        type="build.*", subject_kind="service", after=50, descending=True, limit=4
    ),
    "actor and subject": TxQuery(actor="carol", subject_kind="host", subject_id="db-1"),
}


@pytest.fixture
def query_chain(store: LedgerStore) -> ChainBuilder:
    chain = ChainBuilder(seed=7)
    for n in (7, 1, 12, 5, 19, 6, 10):
        chain.extend(store, n)
    return chain


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_txs(store: LedgerStore, query_chain: ChainBuilder, name: str) -> None:
    q = QUERIES[name]
    assert store.query_txs(q) == expected(query_chain.txs, q)


def test_query_fixture_covers_every_type(query_chain: ChainBuilder) -> None:
    # Otherwise the prefix-boundary cases above would prove nothing.
    assert {t.type for t in query_chain.txs} == set(TYPES)


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize(
    "base",
    [TxQuery(), TxQuery(type="build.*"), TxQuery(actor="alice"), TxQuery(subject_kind="service")],
    ids=["all", "type prefix", "actor", "subject kind"],
)
def test_cursor_pagination(
    store: LedgerStore, query_chain: ChainBuilder, base: TxQuery, descending: bool
) -> None:
    want = expected(query_chain.txs, dataclasses.replace(base, limit=10_000, descending=descending))
    got: list[TxRecord] = []
    after: int | None = None
    while True:
        page = store.query_txs(
            dataclasses.replace(base, limit=4, after=after, descending=descending)
        )
        assert len(page) <= 4
        got += page
        if len(page) < 4:
            break
        after = page[-1].leaf_index
    assert got == want
    assert len(want) > 4  # several pages were walked


def test_subject_id_needs_subject_kind(store: LedgerStore) -> None:
    with pytest.raises(InvalidInput):
        store.query_txs(TxQuery(subject_id="api"))


# -- tree nodes and nonces ------------------------------------------------------------


def test_get_nodes_order_duplicates_and_chunks(store: LedgerStore, chain: ChainBuilder) -> None:
    for n in (300, 211, 90):
        chain.extend(store, n)
    ids = list(chain.hashes)
    assert len(ids) > 1000  # more than one chunk of the SQLite adapter
    assert store.get_nodes(ids) == [chain.hashes[i] for i in ids]
    asked = [*reversed(ids[:50]), (0, 5), (0, 5), (9, 0), (3, 7)]
    assert store.get_nodes(asked) == [chain.hashes[i] for i in asked]


def test_get_nodes_names_the_missing_node(store: LedgerStore, chain: ChainBuilder) -> None:
    chain.extend(store, 8)
    with pytest.raises(StorageError, match=r"level 5, index 1000"):
        store.get_nodes([(0, 0), (5, 1000), (1, 1)])
    with pytest.raises(StorageError, match=r"level 0, index 8\b"):
        store.get_nodes([(0, 8)])


def test_last_nonces_max_wins(store: LedgerStore, chain: ChainBuilder) -> None:
    chain.extend(store, specs=[TxSpec(actor="alice", nonce=10), TxSpec(actor="bob", nonce=3)])
    chain.extend(store, specs=[TxSpec(actor="alice", nonce=12), TxSpec(actor="alice", nonce=11)])
    assert store.last_nonces() == {"alice": 12, "bob": 3}
    # A lower nonce never lowers the stored one (the upsert keeps the maximum).
    batch = chain.build(specs=[TxSpec(actor="bob", nonce=9)])
    store.append_block(batch.block, batch.txs, batch.nodes, {"alice": 5, "bob": 9, "dave": 1})
    assert store.last_nonces() == {"alice": 12, "bob": 9, "dave": 1}
    big = 1_763_769_540_123_456  # microsecond-clock nonces fit in 64 bits
    chain.accept(batch)
    chain.extend(store, specs=[TxSpec(actor="carol", nonce=big)])
    assert store.last_nonces()["carol"] == big


# -- concurrency ------------------------------------------------------------------------


def test_readers_see_whole_blocks_while_writer_appends(
    store: LedgerStore, chain: ChainBuilder
) -> None:
    chain.extend(store, 5)
    stop = threading.Event()
    errors: list[BaseException] = []
    rounds = [0] * 4

    def reader(slot: int) -> None:
        try:
            while not stop.is_set():
                # One statement = one snapshot: a prefix of the log ending at a block edge.
                txs = store.query_txs(TxQuery(limit=1_000_000))
                assert [t.leaf_index for t in txs] == list(range(len(txs)))
                last = store.get_block(txs[-1].height)
                assert last is not None
                assert last.log_size == len(txs)
                # Every tx seen belongs to a block at or below a head read after it.
                seen = list(store.iter_txs())
                head = store.head()
                assert head is not None
                assert max(t.height for t in seen) <= head.height
                assert store.count_txs() >= len(seen)
                rounds[slot] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(40):
            chain.extend(store, 1 + (i * 7) % 23)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    if errors:
        raise errors[0]
    assert all(r > 0 for r in rounds)
    assert_matches_chain(store, chain)


def test_many_threads_read_concurrently(store: LedgerStore, chain: ChainBuilder) -> None:
    for _ in range(3):
        chain.extend(store, 10)
    results: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        n = len(list(store.iter_txs()))
        with lock:
            results.append(n)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [30] * 16
    # Connections of the ended threads get closed when the next thread starts reading.
    extra = threading.Thread(target=work)
    extra.start()
    extra.join()
    assert len(store._readers) <= 2  # type: ignore[attr-defined]


# -- property ---------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
)
_specs = st.builds(
    TxSpec,
    type=st.sampled_from(TYPES) | _text,
    actor=_text,
    subject_kind=_text,
    subject_id=_text,
    nonce=st.integers(min_value=0, max_value=2**63 - 1),
    leaf=st.binary(min_size=0, max_size=300),
)


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blocks=st.lists(st.lists(_specs, min_size=1, max_size=8), min_size=1, max_size=5))
def test_random_batches_round_trip(store_factory: StoreFactory, blocks: list[list[TxSpec]]) -> None:
    store = store_factory()  # a fresh store per example
    chain = ChainBuilder(seed=len(blocks))
    for specs in blocks:
        chain.extend(store, specs=specs)
    assert_matches_chain(store, chain)
    for tx in chain.txs:
        assert tx in store.query_txs(
            TxQuery(
                type=tx.type,
                actor=tx.actor,
                subject_kind=tx.subject_kind,
                subject_id=tx.subject_id,
                since=tx.ts,
                limit=10_000,
            )
        )


# -- SQLite specifics -------------------------------------------------------------------


def test_sqlite_reopen_finds_everything(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    chain = ChainBuilder(seed=3)
    with SqliteStore(path) as first:
        first.initialize()
        first.set_meta("ledger_id", "L1")
        for n in (3, 5, 8):
            chain.extend(first, n)
    second = open_store(f"sqlite:///{path}")  # absolute: sqlite:////tmp/...
    try:
        assert second.get_meta("ledger_id") == "L1"
        assert_matches_chain(second, chain)
        chain.extend(second, 2)
        assert_matches_chain(second, chain)
    finally:
        second.close()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore(path)
    try:
        store.initialize()
        writer = store._writer_conn()
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert writer.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert writer.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        reader = store._reader()
        assert reader.execute("PRAGMA query_only").fetchone()[0] == 1
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_sqlite_reader_does_not_create_a_missing_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "missing.db")
    try:
        with pytest.raises(StorageError):
            store.head()
        assert not (tmp_path / "missing.db").exists()
    finally:
        store.close()


def test_sqlite_refuses_memory() -> None:
    with pytest.raises(ConfigError):
        SqliteStore(":memory:")


PLANNED = {
    "exact type": (TxQuery(type="build.started"), "txs_type"),
    "type prefix": (TxQuery(type="build.*"), "txs_type"),
    "type prefix descending after": (
        TxQuery(type="build.*", after=100, descending=True),
        "txs_type",
    ),
    "actor": (TxQuery(actor="alice"), "txs_actor"),
    "subject": (TxQuery(subject_kind="service", subject_id="api"), "txs_subject"),
    "subject kind": (TxQuery(subject_kind="service"), "txs_subject"),
    "time range": (TxQuery(since=ts_for_leaf(10), until=ts_for_leaf(20)), "txs_ts"),
}


@pytest.mark.parametrize("name", list(PLANNED))
def test_sqlite_queries_use_indexes(tmp_path: Path, name: str) -> None:
    query, index = PLANNED[name]
    store = SqliteStore(tmp_path / "plan.db")
    try:
        store.initialize()
        chain = ChainBuilder(seed=5)
        for _ in range(4):
            chain.extend(store, 50)
        statements: list[str] = []
        store._reader().set_trace_callback(statements.append)
        store.query_txs(query)
        store._reader().set_trace_callback(None)
        (statement,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        plan = [row[3] for row in store._reader().execute(f"EXPLAIN QUERY PLAN {statement}")]
    finally:
        store.close()
    assert not any(step.startswith("SCAN txs") for step in plan), plan
    assert any(f"USING INDEX {index}" in step for step in plan), plan


def test_sqlite_get_nodes_and_lookups_use_keys(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "plan.db")
    try:
        store.initialize()
        chain = ChainBuilder(seed=5)
        chain.extend(store, 20)
        statements: list[str] = []
        store._reader().set_trace_callback(statements.append)
        store.get_nodes([(0, 1), (1, 2)])
        store.get_tx(chain.txs[3].tx_id)
        store.get_block_by_log_size(20)
        store.txs_in_block(0)
        store.count_txs()
        store._reader().set_trace_callback(None)
        for statement in statements:
            plan = [row[3] for row in store._reader().execute(f"EXPLAIN QUERY PLAN {statement}")]
            assert not any(
                step.startswith(("SCAN txs", "SCAN n", "SCAN blocks")) for step in plan
            ), (statement, plan)
    finally:
        store.close()


# -- PostgreSQL specifics ---------------------------------------------------------------


def test_postgres_errors_hide_the_password() -> None:
    store = PostgresStore("postgresql://someone:hunter2@127.0.0.1:1/test?connect_timeout=2")
    try:
        with pytest.raises(StorageError) as info:
            store.initialize()
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(info.value.to_dict())
        assert "127.0.0.1:1" in str(info.value)
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_schema_is_isolated(pg_schema: str) -> None:
    chain = ChainBuilder(seed=2)
    a = PostgresStore(PG_DSN, schema=pg_schema)
    b = PostgresStore(PG_DSN, schema=pg_schema + "_b")
    try:
        a.initialize()
        b.initialize()
        chain.extend(a, 3)
        assert b.head() is None
        assert a.count_txs() == 3
    finally:
        b.drop()
        a.close()
        b.close()


# -- factory ----------------------------------------------------------------------------


def test_open_store_bare_path(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bare.db"
    store = open_store(str(path))
    try:
        assert isinstance(store, SqliteStore)
        assert store.head() is None
        assert path.exists()
    finally:
        store.close()


def test_open_store_relative_and_absolute_sqlite_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///data/rel.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}")
    try:
        assert isinstance(rel, SqliteStore)
        assert isinstance(absolute, SqliteStore)
        assert (tmp_path / "data" / "rel.db").exists()
        assert str(absolute.path) == str(tmp_path / "abs.db")
        assert str(tmp_path).startswith("/")  # so the URL above had four slashes
    finally:
        rel.close()
        absolute.close()


@pytest.mark.parametrize(
    "url", ["mysql://root:hunter2@db/ledger", "postgresql+psycopg://u:hunter2@h/d", "s3://b/k"]
)
def test_open_store_unknown_scheme(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    scheme = url.split("://", maxsplit=1)[0]
    assert repr(scheme) in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value.to_dict())


@pytest.mark.parametrize("url", ["", "   ", "sqlite://", "sqlite:///", "sqlite://host/x.db"])
def test_open_store_malformed(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


@pytest.mark.parametrize(
    ("url", "dsn", "schema"),
    [
        ("postgresql://u@h/db", "postgresql://u@h/db", None),
        ("postgresql://u@h/db?schema=s1", "postgresql://u@h/db", "s1"),
        (
            "postgres://u:p@h:5433/db?sslmode=require&schema=s%202&options=-c%20a%3Db",
            "postgres://u:p@h:5433/db?sslmode=require&options=-c%20a%3Db",
            "s 2",
        ),
        (
            "postgresql://h/db?schema=x&connect_timeout=3",
            "postgresql://h/db?connect_timeout=3",
            "x",
        ),
    ],
)
def test_split_schema(url: str, dsn: str, schema: str | None) -> None:
    assert _split_schema(url) == (dsn, schema)


@pytest.mark.parametrize(
    "url", ["postgresql://h/db?schema=", "postgresql://h/db?schema=a&schema=b"]
)
def test_split_schema_refuses(url: str) -> None:
    with pytest.raises(ConfigError):
        _split_schema(url)


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_postgres_url(pg_schema: str, scheme: str) -> None:
    url = PG_DSN.replace("postgresql://", f"{scheme}://", 1) + f"?schema={pg_schema}"
    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema == pg_schema
        assert store.head() is None  # initialised: the tables exist
        store.set_meta("k", "v")
        assert store.get_meta("k") == "v"
    finally:
        store.close()
