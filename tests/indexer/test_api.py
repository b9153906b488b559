"""The index query API (REST, GraphQL, /metrics, /healthz) over a real SQLite index.

The index is written through the indexer's own ``Store.commit`` (the same path backfill
uses), with tables from the ERC-721 and ERC-20 presets, so derived tables (owners,
balances) are the store's, not ours. ``seed_store`` keeps the truth it wrote, and every
test compares what the API answers against it: all pages joined equal all rows, in order,
in both directions, with and without filters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from opsledger.core import InvalidInput
from opsledger.indexer.abi import PRESETS, ContractEvents
from opsledger.indexer.api import create_app, parse_listen, serve_api
from opsledger.indexer.schema import balance_table, owner_table
from opsledger.indexer.storage import Batch, Store
from opsledger.testing.anvil import free_port

with warnings.catch_warnings():
    # starlette 1.x asks for httpx2 under its TestClient; the project pins httpx.
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient` is deprecated"
    )
    from fastapi.testclient import TestClient

ZERO = "0x" + "0" * 40
_HUGE_CURSOR = base64.urlsafe_b64encode(json.dumps([str(2**70), "0", "local"]).encode()).decode()
HOLDERS = [f"0x{i:040x}" for i in range(1, 7)]
BIG = 2**256 - 1


@dataclass
class Truth:
    """What ``seed_store`` wrote, in (block_number, log_index) order."""

    nft_transfers: list[dict[str, Any]] = field(default_factory=list)
    token_transfers: list[dict[str, Any]] = field(default_factory=list)
    owners: dict[int, str] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)


def _meta(block: int, log_index: int, address: str) -> dict[str, Any]:
    return {
        "chain": "local",
        "block_number": block,
        "block_hash": f"0x{block:064x}",
        "tx_hash": f"0x{block * 1000 + log_index:064x}",
        "log_index": log_index,
        "address": address,
    }


def seed_store(store: Store, blocks: int = 40, seed: int = 3) -> Truth:
    """Tables ``nft_*`` (ERC-721) and ``token_*`` (ERC-20) with transfers over ``blocks``."""
    nft_specs = ContractEvents("nft", PRESETS["erc721"], None).specs
    token_specs = ContractEvents("token", PRESETS["erc20"], None).specs
    store.ensure_tables([*nft_specs, owner_table("nft"), *token_specs, balance_table("token")])
    rng = random.Random(seed)
    truth = Truth()
    nft_address, token_address = "0x" + "a" * 40, "0x" + "b" * 40
    next_token = 0
    for block in range(1, blocks + 1):
        batch = Batch(chain="local", first_block=block, height=block)
        batch.blocks[block] = (f"0x{block:064x}", f"0x{block - 1:064x}")
        nft_rows, token_rows = [], []
        log_index = 0
        for _ in range(rng.randint(0, 3)):
            if truth.owners and rng.random() < 0.4:
                token_id = rng.choice(sorted(truth.owners))
                sender = truth.owners[token_id]
            else:
                token_id, sender = next_token, ZERO
                next_token += 1
            receiver = rng.choice(HOLDERS)
            row = {
                **_meta(block, log_index, nft_address),
                "from": sender,
                "to": receiver,
                "token_id": token_id,
            }
            nft_rows.append(row)
            truth.owners[token_id] = receiver
            log_index += 1
        for _ in range(rng.randint(1, 2)):
            receiver = rng.choice(HOLDERS)
            value = BIG if block == 7 else rng.randrange(1, 10**6)
            row = {
                **_meta(block, log_index, token_address),
                "from": ZERO,
                "to": receiver,
                "value": value,
            }
            token_rows.append(row)
            truth.balances[receiver] = truth.balances.get(receiver, 0) + value
            log_index += 1
        batch.rows = {"nft_transfer": nft_rows, "token_transfer": token_rows}
        store.commit(batch, finality_depth=5)
        truth.nft_transfers += nft_rows
        truth.token_transfers += token_rows
    return truth


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def truth(store: Store) -> Truth:
    return seed_store(store)


@pytest.fixture
def registry() -> CollectorRegistry:
    fresh = CollectorRegistry()
    Counter("indexer_rpc_calls", "RPC calls", registry=fresh).inc(3)
    return fresh


@pytest.fixture
def client(store: Store, truth: Truth, registry: CollectorRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(store, registry=registry)) as test_client:
        yield test_client


def _all_pages(client: TestClient, table: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(1000):
        query = {**params, **({"after": after} if after else {})}
        reply = client.get(f"/api/v1/tables/{table}", params=query)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["table"] == table
        rows += body["rows"]
        after = body["next"]
        if after is None:
            return rows
    raise AssertionError("pagination did not end")


def _key(row: dict[str, Any]) -> tuple[int, int]:
    return int(row["block_number"]), int(row["log_index"])


def _as_api(row: dict[str, Any], uint: str) -> dict[str, Any]:
    return {**row, uint: str(row[uint])}


# -- REST -----------------------------------------------------------------------------


def test_tables_lists_every_table_with_columns(client: TestClient) -> None:
    body = client.get("/api/v1/tables").json()
    names = [t["name"] for t in body["tables"]]
    assert {"nft_transfer", "nft_approval", "nft_owner", "token_transfer", "token_balance"} <= set(
        names
    )
    transfer = next(t for t in body["tables"] if t["name"] == "nft_transfer")
    columns = {c["name"]: c["kind"] for c in transfer["columns"]}
    assert columns["token_id"] == "uint"
    assert columns["block_number"] == "int"
    assert transfer["signature"] == "Transfer(address,address,uint256)"


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_pages_join_to_every_row_in_order(client: TestClient, truth: Truth, limit: int) -> None:
    rows = _all_pages(client, "nft_transfer", limit=limit)
    assert [_key(r) for r in rows] == [_key(r) for r in truth.nft_transfers]
    for got, want in zip(rows, truth.nft_transfers, strict=True):
        assert got["to"] == want["to"]
        assert got["from"] == want["from"]
        assert got["token_id"] == str(want["token_id"])
        assert got["tx_hash"] == want["tx_hash"]


def test_descending_order_is_the_exact_reverse(client: TestClient, truth: Truth) -> None:
    rows = _all_pages(client, "token_transfer", limit=5, order="desc")
    assert [_key(r) for r in rows] == [_key(r) for r in reversed(truth.token_transfers)]


def test_filters_equality_and_ranges(client: TestClient, truth: Truth) -> None:
    holder = HOLDERS[2]
    rows = _all_pages(client, "nft_transfer", to=holder, limit=3)
    want = [r for r in truth.nft_transfers if r["to"] == holder]
    assert want, "the seed must hit this holder"
    assert [_key(r) for r in rows] == [_key(r) for r in want]
    checksummed = "0x" + holder[2:].upper()  # addresses match whatever their case
    assert _all_pages(client, "nft_transfer", to=checksummed) == rows
    ranged = _all_pages(client, "token_transfer", block_number__gte=10, block_number__lt=20)
    assert [_key(r) for r in ranged] == [
        _key(r) for r in truth.token_transfers if 10 <= r["block_number"] < 20
    ]
    one = _all_pages(client, "nft_transfer", token_id="0")
    assert [r["token_id"] for r in one] == ["0"] * len(one)
    assert len(one) == sum(1 for r in truth.nft_transfers if r["token_id"] == 0)


def test_uint256_values_stay_exact_as_strings(client: TestClient, truth: Truth) -> None:
    rows = _all_pages(client, "token_transfer", block_number=7)
    assert str(BIG) in [r["value"] for r in rows]
    assert isinstance(rows[0]["block_number"], int)


def test_derived_tables_match_the_truth(client: TestClient, truth: Truth) -> None:
    owners = _all_pages(client, "nft_owner", limit=4)
    assert {int(r["token_id"]): r["owner"] for r in owners} == truth.owners
    balances = _all_pages(client, "token_balance")
    assert {r["holder"]: int(r["balance"]) for r in balances} == truth.balances


def test_a_page_cursor_resumes_after_new_rows_arrive(store: Store, client: TestClient) -> None:
    first = client.get("/api/v1/tables/token_transfer", params={"limit": 1000}).json()
    assert first["next"] is None
    last = first["rows"][-1]
    cursor_page = client.get(
        "/api/v1/tables/token_transfer", params={"limit": 1, "order": "desc"}
    ).json()
    assert _key(cursor_page["rows"][0]) == _key(last)
    batch = Batch(chain="local", first_block=41, height=41)
    row = {**_meta(41, 0, "0x" + "b" * 40), "from": ZERO, "to": HOLDERS[0], "value": 5}
    batch.rows = {"token_transfer": [row]}
    store.commit(batch, finality_depth=5)
    again = client.get("/api/v1/tables/token_transfer", params={"limit": 1000}).json()
    assert _key(again["rows"][-1]) == (41, 0)


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "field"),
    [
        ("/api/v1/tables/nope", {}, 404, "not_found", "table"),
        ("/api/v1/tables/nft_transfer", {"colour": "red"}, 400, "invalid_input", "colour"),
        ("/api/v1/tables/nft_transfer", {"after": "%%%"}, 400, "invalid_input", "after"),
        ("/api/v1/tables/nft_transfer", {"after": "WzFd"}, 400, "invalid_input", "after"),
        ("/api/v1/tables/nft_transfer", {"limit": "0"}, 400, "invalid_input", "limit"),
        ("/api/v1/tables/nft_transfer", {"limit": "ten"}, 400, "invalid_input", "limit"),
        ("/api/v1/tables/nft_transfer", {"order": "up"}, 400, "invalid_input", "order"),
        ("/api/v1/tables/nft_transfer", {"token_id": "x1"}, 400, "invalid_input", "token_id"),
        ("/api/v1/tables/nft_transfer", {"to__gte": "1"}, 400, "invalid_input", "to__gte"),
        ("/api/v1/tables/nope_x", {"limit": "5"}, 404, "not_found", "table"),
        # found by the schemathesis fuzz: SQLite raised OverflowError (a 500) on these
        ("/api/v1/tables/nft_transfer", {"block_number": str(2**64)}, 400, "invalid_input", "*"),
        ("/api/v1/tables/nft_transfer", {"after": _HUGE_CURSOR}, 400, "invalid_input", "*"),
    ],
)
def test_bad_requests_get_one_json_error_shape(
    client: TestClient,
    path: str,
    params: dict[str, str],
    status: int,
    code: str,
    field: str,
) -> None:
    reply = client.get(path, params=params)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    if field != "*":  # "*": the store may or may not name the field
        assert error.get("field") == field
    assert error["message"]


def test_a_parameter_given_twice_is_refused(client: TestClient) -> None:
    reply = client.get("/api/v1/tables/nft_transfer?to=0x1&to=0x2")
    assert reply.status_code == 400
    assert reply.json()["error"]["field"] == "to"


def test_a_cursor_from_another_table_is_refused(client: TestClient) -> None:
    owner_page = client.get("/api/v1/tables/nft_owner", params={"limit": 1}).json()
    reply = client.get("/api/v1/tables/token_balance", params={"after": owner_page["next"]})
    # Same cursor width (chain + key) but a uint token id where an address is expected:
    # it may page from there, but it must never be a server error.
    assert reply.status_code in (200, 400)
    transfer = client.get("/api/v1/tables/nft_transfer", params={"after": owner_page["next"]})
    assert transfer.status_code == 400


def test_status_metrics_and_health(client: TestClient, store: Store) -> None:
    status = client.get("/api/v1/status").json()
    [chain] = status["chains"]
    assert chain["chain"] == "local"
    assert chain["height"] == 40
    assert chain["events"] == store.count("nft_transfer") + store.count("token_transfer")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "indexer_rpc_calls_total 3.0" in metrics.text
    assert client.get("/healthz").json() == {"status": "ok"}


def test_metrics_without_a_registry_is_a_json_404(store: Store, truth: Truth) -> None:
    with TestClient(create_app(store)) as plain:
        reply = plain.get("/metrics")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_health_fails_when_the_store_does(store: Store, truth: Truth) -> None:
    app = create_app(store)
    store.close()
    with TestClient(app, raise_server_exceptions=False) as broken:
        assert broken.get("/healthz").status_code == 503
        reply = broken.get("/api/v1/tables/nft_transfer")
    assert reply.status_code >= 500
    assert "Traceback" not in reply.text
    assert reply.json()["error"]["code"] == "internal_error"


def test_openapi_documents_each_table_and_its_filters(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/api/v1/tables/nft_transfer"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"after", "limit", "order", "to", "token_id", "block_number__gte"} <= names


# -- GraphQL -------------------------------------------------------------------------


def _gql(client: TestClient, query: str, **variables: Any) -> dict[str, Any]:
    reply = client.post("/graphql", json={"query": query, "variables": variables})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


PAGE_QUERY = """
query Page($after: String, $limit: Int!, $to: String, $from_block: Int) {
  nft_transfer(filter: {to: $to, block_number_gte: $from_block}, after: $after,
               limit: $limit) {
    rows { block_number log_index from to token_id tx_hash final }
    next
  }
}
"""


def test_graphql_pages_with_filters_match_rest(client: TestClient, truth: Truth) -> None:
    holder = HOLDERS[1]
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        body = _gql(client, PAGE_QUERY, after=after, limit=2, to=holder, from_block=5)
        assert "errors" not in body, body
        page = body["data"]["nft_transfer"]
        rows += page["rows"]
        after = page["next"]
        if after is None:
            break
    want = [r for r in truth.nft_transfers if r["to"] == holder and r["block_number"] >= 5]
    assert [_key(r) for r in rows] == [_key(r) for r in want]
    assert [r["token_id"] for r in rows] == [str(r["token_id"]) for r in want]
    fields = ("block_number", "log_index", "from", "to", "token_id", "tx_hash", "final")
    rest = _all_pages(client, "nft_transfer", to=holder, block_number__gte=5)
    assert rows == [{k: r[k] for k in fields} for r in rest]


def test_graphql_big_integers_order_and_tables(client: TestClient, truth: Truth) -> None:
    body = _gql(
        client,
        "{ token_transfer(filter: {block_number: 7}, order: desc) { rows { value } }"
        "  tables { name columns { name kind } } }",
    )
    assert "errors" not in body, body
    assert str(BIG) in [r["value"] for r in body["data"]["token_transfer"]["rows"]]
    assert "nft_owner" in [t["name"] for t in body["data"]["tables"]]
    owners = _gql(client, "{ nft_owner(limit: 1000) { rows { token_id owner } next } }")
    got = {int(r["token_id"]): r["owner"] for r in owners["data"]["nft_owner"]["rows"]}
    assert got == truth.owners


def test_graphql_errors_are_reported_not_crashed(client: TestClient) -> None:
    bad_cursor = _gql(client, '{ nft_transfer(after: "zz") { next } }')
    assert bad_cursor["errors"][0]["message"] == "not a cursor from this API"
    bad_limit = _gql(client, "{ nft_transfer(limit: 0) { next } }")
    assert "limit" in bad_limit["errors"][0]["message"]
    unknown = client.post("/graphql", json={"query": "{ nope { next } }"})
    assert "errors" in unknown.json()


# -- serving -------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8547") == ("127.0.0.1", 8547)
    for bad in ("8547", "127.0.0.1:", ":80", "host:99999", "host:x"):
        with pytest.raises(InvalidInput):
            parse_listen(bad)


def test_serve_api_listens_until_cancelled(store: Store, truth: Truth) -> None:
    port = free_port()

    async def scenario() -> dict[str, Any]:
        started = asyncio.Event()
        task = asyncio.create_task(serve_api(store, f"127.0.0.1:{port}", started=started))
        await asyncio.wait_for(started.wait(), timeout=10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            reply = await http.get("/api/v1/tables/nft_owner", params={"limit": 2})
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        body: dict[str, Any] = reply.json()
        return body

    body = asyncio.run(scenario())
    assert len(body["rows"]) == 2
    assert json.dumps(body)


def test_graphql_refuses_queries_that_ask_for_unbounded_work(tmp_path: Path) -> None:
    from opsledger.indexer.graphql import MAX_ALIASES, build_schema

    store = Store.open(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        schema = build_schema(store, [])
        aliases = " ".join(f"a{i}: tables {{ name }}" for i in range(MAX_ALIASES + 1))
        result = asyncio.run(schema.execute(f"{{ {aliases} }}"))
        assert result.errors, "a query with too many aliases must be refused"
        assert "aliases" in str(result.errors[0]).lower()
        assert not asyncio.run(schema.execute("{ tables { name } }")).errors
    finally:
        store.close()
