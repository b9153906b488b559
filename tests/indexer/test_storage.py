"""The store, on SQLite and on PostgreSQL (marker postgres, one schema per test):
commits with checkpoints, derived tables under commit and rollback, the read API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.core import InvalidInput, NotFound, StorageError
from opsledger.indexer.abi import PRESETS, ContractEvents
from opsledger.indexer.schema import balance_table, owner_table
from opsledger.indexer.sqlutil import decode_cursor as _decode_cursor
from opsledger.indexer.sqlutil import encode_cursor as _encode_cursor
from opsledger.indexer.storage import Batch, Child, Store

PG = "postgresql://postgres@127.0.0.1:5432/test"
A, B, C = ("0x" + c * 40 for c in "abc")
ZERO = "0x" + "0" * 40


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        db = Store.open(f"sqlite:///{tmp_path / 'index.db'}")
        yield db
        db.close()
        return
    schema = "ix_" + uuid.uuid4().hex[:12]
    db = Store.open(f"{PG}?schema={schema}")
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def specs() -> list[Any]:
    nft = ContractEvents("nft", PRESETS["erc721"], ["Transfer"])
    tok = ContractEvents("tok", PRESETS["erc20"], None)
    return [*nft.specs, *tok.specs, owner_table("nft"), balance_table("tok")]


def transfer(
    block: int, index: int, sender: str, receiver: str, third: int, key: str
) -> dict[str, Any]:
    return {
        "chain": "c1",
        "block_number": block,
        "block_hash": f"0x{block:064x}",
        "tx_hash": f"0x{block * 1000 + index:064x}",
        "log_index": index,
        "address": "0x" + "1" * 40,
        "final": False,
        "from": sender,
        "to": receiver,
        key: third,
    }


def batch(first: int, last: int, nft: list[dict[str, Any]], tok: list[dict[str, Any]]) -> Batch:
    return Batch(
        "c1",
        first,
        last,
        rows={"nft_transfer": nft, "tok_transfer": tok},
        blocks={n: (f"0x{n:064x}", f"0x{n - 1:064x}") for n in range(first, last + 1)},
        head=last,
    )


def owners(store: Store) -> dict[int, str]:
    return {r["token_id"]: r["owner"] for r in store.query("nft_owner", {}, None, 1000)[0]}


def balances(store: Store) -> dict[str, int]:
    return {r["holder"]: r["balance"] for r in store.query("tok_balance", {}, None, 1000)[0]}


def test_commit_rollback_and_derived_tables(store: Store) -> None:
    store.ensure_tables(specs())
    big = 2**256 - 1
    store.commit(
        batch(
            0,
            9,
            [transfer(1, 0, ZERO, A, 1, "token_id"), transfer(2, 0, ZERO, A, 2, "token_id")],
            [transfer(1, 1, ZERO, A, big, "value"), transfer(3, 0, A, B, 5, "value")],
        ),
        finality_depth=4,
    )
    assert owners(store) == {1: A, 2: A}
    assert balances(store) == {A: big - 5, B: 5}
    store.commit(
        batch(
            10,
            12,
            [
                transfer(10, 0, A, B, 1, "token_id"),
                transfer(11, 0, B, C, 1, "token_id"),
                transfer(12, 3, A, ZERO, 2, "token_id"),
            ],
            [transfer(11, 1, B, C, 5, "value"), transfer(12, 0, A, C, big - 5, "value")],
        ),
        finality_depth=4,
    )
    assert owners(store) == {1: C}
    assert balances(store) == {C: big}
    state = store.chain_state("c1")
    assert state is not None and state.height == 12 and state.events == 9
    assert sorted(store.block_hashes("c1")) == [8, 9, 10, 11, 12]
    rows, _ = store.query("nft_transfer", {}, None, 100)
    assert [r["final"] for r in rows] == [True, True, False, False, False]

    result = store.rollback("c1", 10)
    assert result.removed_rows == 4
    assert result.replaced == [f"0x{n:064x}" for n in (11, 12)]
    assert owners(store) == {1: B, 2: A}
    assert balances(store) == {A: big - 5, B: 5}
    state = store.chain_state("c1")
    assert state is not None and (state.height, state.reorgs, state.max_reorg_depth) == (10, 1, 2)
    assert sorted(store.block_hashes("c1")) == [8, 9, 10]
    store.rollback("c1", 0)
    assert owners(store) == {} and balances(store) == {}


def test_commit_refuses_a_gap_or_a_repeat(store: Store) -> None:
    store.ensure_tables(specs())
    store.commit(batch(0, 5, [], []), 2)
    with pytest.raises(StorageError, match="checkpoint is 5"):
        store.commit(batch(7, 8, [], []), 2)
    with pytest.raises(StorageError):
        store.commit(batch(3, 8, [], []), 2)
    store.commit(batch(6, 8, [transfer(7, 0, ZERO, A, 9, "token_id")], []), 2)
    state = store.chain_state("c1")
    assert state is not None and state.height == 8


def test_failed_commit_leaves_nothing(store: Store) -> None:
    store.ensure_tables(specs())
    row = transfer(1, 0, ZERO, A, 1, "token_id")
    with pytest.raises(Exception):  # noqa: B017, PT011 - the duplicate key error of either driver
        store.commit(batch(0, 3, [row, dict(row)], []), 2)
    assert store.chain_state("c1") is None or store.chain_state("c1").height == -1  # type: ignore[union-attr]
    assert store.count("nft_transfer") == 0 and owners(store) == {}


def test_query_pages_filters_and_cursor(store: Store) -> None:
    store.ensure_tables(specs())
    rows = [
        transfer(b, i, ZERO, [A, B][i % 2], b * 10 + i, "token_id")
        for b in range(1, 21)
        for i in range(3)
    ]
    store.commit(batch(0, 20, rows, []), 5)
    seen: list[tuple[int, int]] = []
    cursor = None
    while True:
        page, cursor = store.query("nft_transfer", {"to": B.upper().replace("0X", "0x")}, cursor, 7)
        seen += [(r["block_number"], r["log_index"]) for r in page]
        if cursor is None:
            break
    assert seen == [(b, 1) for b in range(1, 21)]
    desc, _ = store.query("nft_transfer", {"block_number__gte": 19}, None, 100, "desc")
    assert [(r["block_number"], r["log_index"]) for r in desc] == [
        (20, 2),
        (20, 1),
        (20, 0),
        (19, 2),
        (19, 1),
        (19, 0),
    ]
    exact, _ = store.query("nft_transfer", {"token_id": "52"}, None, 10)
    assert [r["token_id"] for r in exact] == [52]
    assert [t.name for t in store.list_tables()] == [
        "nft_owner",
        "nft_transfer",
        "tok_approval",
        "tok_balance",
        "tok_transfer",
    ]
    with pytest.raises(NotFound):
        store.query("nope")
    with pytest.raises(InvalidInput):
        store.query("nft_transfer", {"colour": 1})
    with pytest.raises(InvalidInput):
        store.query("nft_transfer", {"to__gte": A})
    with pytest.raises(InvalidInput):
        store.query("nft_transfer", {}, "garbage!", 10)
    with pytest.raises(InvalidInput):
        store.query("nft_transfer", {}, None, 0)
    with pytest.raises(InvalidInput):
        store.query("nft_transfer", {"block_number__gte": 2**70})
    with pytest.raises(InvalidInput):
        store.query("nft_transfer", {}, _encode_cursor([2**64, 1, "c1"]), 10)
    hexed, _ = store.query("nft_transfer", {"token_id": "0x34", "log_index": "2"}, None, 10)
    assert [r["token_id"] for r in hexed] == [52]


def test_children_and_reopen(store: Store, tmp_path: Path) -> None:
    store.ensure_tables(specs())
    b = batch(0, 4, [], [])
    b.children = [Child("c1", "pool", A, 2), Child("c1", "pool", B, 4)]
    store.commit(b, 1)
    assert [c.address for c in store.children("c1")] == [A, B]
    store.rollback("c1", 3)
    assert [c.address for c in store.children("c1")] == [A]
    # The layout is stored with the data: a reader needs only the URL.
    reader = Store.open(store.url)
    assert [t.name for t in reader.list_tables()] == [t.name for t in store.list_tables()]
    reader.close()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(min_value=0, max_value=2**256), st.text(max_size=20)), max_size=4
    )
)
def test_cursor_round_trip(values: list[Any]) -> None:
    decoded = _decode_cursor(_encode_cursor(values), len(values))
    assert decoded == [str(v) if isinstance(v, int) else v for v in values]


def index_names(store: Store) -> set[str]:
    if store.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    with store.db.lock:
        return {r[0] for r in store.db.execute(sql).fetchall()}


def test_deferred_indexes_and_tuple_rows(store: Store) -> None:
    """A backfill fills bare tables (rows as tuples) and builds the lookup indexes after;
    the stored rows and the derived tables are the same as from dict rows."""
    store.ensure_tables(specs(), defer_indexes=True)
    lookup = {"nft_transfer_from", "nft_transfer_to", "nft_transfer_token_id", "nft_owner_owner"}
    assert not lookup & index_names(store)
    assert "nft_transfer__unfinal" in index_names(store)
    rows = [transfer(1, 0, ZERO, A, 1, "token_id"), transfer(2, 0, A, B, 1, "token_id")]
    columns = [c.name for c in store.spec("nft_transfer").columns]
    b = batch(0, 2, [], [transfer(2, 1, ZERO, C, 7, "value")])
    b.tables = {"nft_transfer": [tuple(r[c] for c in columns) for r in rows]}
    assert b.events == 3
    store.commit(b, finality_depth=1)
    store.ensure_indexes()
    assert lookup <= index_names(store)
    store.ensure_indexes()  # idempotent
    got, _ = store.query("nft_transfer", {"to": B}, None, 10)
    assert [(r["block_number"], r["token_id"], r["from"], r["final"]) for r in got] == [
        (2, 1, A, False)
    ]
    first, _ = store.query("nft_transfer", {"block_number": 1}, None, 10)
    # Given as not final, but at the finality depth: the commit's finality update marks it.
    assert [r["final"] for r in first] == [True]
    assert owners(store) == {1: B}
    assert balances(store) == {C: 7}
