"""Every route's happy path and JSON shape, on a real SQLite home and the real app."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from opsledger.api import create_app, routes
from opsledger.app import Home
from opsledger.client.base import LedgerClient, Signer
from opsledger.client.local import LocalClient
from opsledger.core import (
    PublicKey,
    SignedTransaction,
    Subject,
    b64decode,
    leaf_hash,
    open_checkpoint,
    verify_consistency,
    verify_inclusion,
)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

MakeNote = Callable[..., SignedTransaction]


def node_keys(home: Home) -> dict[str, PublicKey]:
    name = home.config().node
    return {name: home.load_key(name).public_key}


def check_inclusion(home: Home, proof: dict[str, Any], leaf: bytes) -> None:
    """Verify a proof the way an offline auditor would: only the checkpoint and keys."""
    checkpoint = open_checkpoint(proof["checkpoint"], node_keys(home))
    assert checkpoint.size == proof["tree_size"]
    assert proof["leaf_hash"] == leaf_hash(leaf).hex()
    verify_inclusion(
        proof["leaf_index"],
        checkpoint.size,
        leaf_hash(leaf),
        [bytes.fromhex(h) for h in proof["hashes"]],
        checkpoint.root,
    )


def post(api: TestClient, body: bytes) -> Any:
    response = api.post("/api/v1/transactions", content=body)
    assert response.status_code == 201, response.text
    return response.json()


# -- transactions -------------------------------------------------------------------


def test_post_then_get_with_a_proof_that_verifies(
    api: TestClient, home: Home, signer: Signer, make_note: MakeNote
) -> None:
    stx = make_note(signer, "deployed v1.2.3")
    receipt = post(api, stx.leaf)
    assert receipt == {"tx_id": stx.tx_id, "height": 1, "leaf_index": 2}

    response = api.get(f"/api/v1/transactions/{stx.tx_id}")
    assert response.status_code == 200
    view = response.json()
    assert set(view) == {"tx_id", "leaf_index", "height", "leaf", "transaction", "proof"}
    assert view["tx_id"] == stx.tx_id
    assert (view["leaf_index"], view["height"]) == (2, 1)
    assert b64decode(view["leaf"]) == stx.leaf
    assert view["transaction"] == stx.to_dict()
    assert set(view["proof"]) == {
        "tx_id",
        "leaf_index",
        "tree_size",
        "leaf_hash",
        "hashes",
        "checkpoint",
    }
    check_inclusion(home, view["proof"], stx.leaf)


def test_get_accepts_upper_case_ids_and_can_skip_the_proof(
    api: TestClient, signer: Signer, make_note: MakeNote
) -> None:
    stx = make_note(signer)
    post(api, stx.leaf)
    view = api.get(f"/api/v1/transactions/{stx.tx_id.upper()}", params={"proof": "false"}).json()
    assert view["tx_id"] == stx.tx_id
    assert "proof" not in view


def test_the_raw_bytes_are_what_gets_hashed(api: TestClient, signer: Signer) -> None:
    """Floats, big integers and any key order or spacing: the node parses the bytes as
    sent, so the signature made over the canonical form still verifies."""
    body = {"text": "ratios", "ratio": 0.1, "whole": 1.0, "big": 2**53 - 1, "tiny": 1e-7}
    stx = signer.sign("note", Subject("test", "numbers"), body)
    loose = json.dumps(dict(reversed(list(stx.to_dict().items()))), indent=2).encode()
    assert loose != stx.leaf
    receipt = post(api, loose)
    assert receipt["tx_id"] == stx.tx_id
    view = api.get(f"/api/v1/transactions/{stx.tx_id}").json()
    assert b64decode(view["leaf"]) == stx.leaf


def test_list_filters_and_cursor_pagination(
    api: TestClient,
    local_client: LocalClient,
    signer: Signer,
    make_note: MakeNote,
    register_actor: Callable[[LedgerClient, Signer, str, list[str]], Signer],
) -> None:
    ops = register_actor(local_client, signer, "ops-bot", ["operator"])
    mine = [post(api, make_note(signer, f"n{i}").leaf)["tx_id"] for i in range(5)]
    theirs = post(api, make_note(ops, "from ops").leaf)["tx_id"]

    seen: list[str] = []
    after: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"type": "note", "actor": "admin", "limit": 2}
        if after is not None:
            params["after"] = after
        page = api.get("/api/v1/transactions", params=params).json()
        assert set(page) == {"items", "next"}
        pages += 1
        seen += [item["tx_id"] for item in page["items"]]
        if page["next"] is None:
            break
        assert page["next"] == page["items"][-1]["leaf_index"]
        after = page["next"]
    assert seen == mine
    assert pages == 3

    desc = api.get("/api/v1/transactions", params={"type": "note", "order": "desc"}).json()
    assert [item["tx_id"] for item in desc["items"]] == [theirs, *reversed(mine)]
    assert desc["next"] is None

    by_subject = api.get("/api/v1/transactions", params={"subject": "test:api"}).json()
    assert len(by_subject["items"]) == 6
    by_kind = api.get("/api/v1/transactions", params={"subject": "actor"}).json()
    assert {i["transaction"]["type"] for i in by_kind["items"]} == {"identity.key_added"}
    by_prefix = api.get("/api/v1/transactions", params={"type": "identity.*"}).json()
    assert len(by_prefix["items"]) == 3  # admin, node, ops-bot
    item = by_prefix["items"][0]
    assert set(item) == {"tx_id", "leaf_index", "height", "leaf", "transaction"}


def test_time_filters(api: TestClient, signer: Signer, make_note: MakeNote) -> None:
    stx = make_note(signer)
    post(api, stx.leaf)
    ts = stx.tx.ts
    since = api.get("/api/v1/transactions", params={"since": ts, "type": "note"}).json()
    assert [i["tx_id"] for i in since["items"]] == [stx.tx_id]
    until = api.get("/api/v1/transactions", params={"until": ts, "type": "note"}).json()
    assert until["items"] == []


@pytest.mark.parametrize(
    ("junk", "canonical"),
    [(b'{"not": "a transaction"}', False), (b'{"not":"a transaction"}', True)],
    ids=["strict-parser", "canonical-items"],
)
def test_batch_answers_each_item_in_order(
    api: TestClient,
    signer: Signer,
    make_note: MakeNote,
    monkeypatch: pytest.MonkeyPatch,
    junk: bytes,
    canonical: bool,
) -> None:
    """A batch of canonical items goes to the node as bytes (its fast, pipelined path);
    any other goes through the strict parser first. The answers are the same."""
    good = [make_note(signer, f"b{i}") for i in range(3)]
    body = b"[" + b",".join([good[0].leaf, junk, good[1].leaf, good[0].leaf, good[2].leaf]) + b"]"
    if canonical:

        def strict_parser_not_used(raw: bytes) -> None:
            raise AssertionError("a canonical batch took the strict parser")

        monkeypatch.setattr(routes, "_parse_batch", strict_parser_not_used)
    response = api.post("/api/v1/transactions/batch", content=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 5
    assert results[0]["tx_id"] == good[0].tx_id
    assert results[1]["error"]["code"] == "schema_error"
    assert results[2]["tx_id"] == good[1].tx_id
    assert results[3]["error"]["code"] == "replay_rejected"
    assert results[4]["tx_id"] == good[2].tx_id
    leaves = [results[i]["leaf_index"] for i in (0, 2, 4)]
    assert leaves == [2, 3, 4]
    assert api.get("/api/v1/head").json()["log_size"] == 5


def test_empty_batch(api: TestClient) -> None:
    response = api.post("/api/v1/transactions/batch", content=b"[]")
    assert response.status_code == 200
    assert response.json() == {"results": []}


# -- ledger -------------------------------------------------------------------------


def test_head_block_and_checkpoint(
    api: TestClient, local_client: LocalClient, home: Home, signer: Signer, make_note: MakeNote
) -> None:
    post(api, make_note(signer).leaf)
    head = api.get("/api/v1/head").json()
    assert head == local_client.head()
    assert set(head) == {
        "height",
        "block_hash",
        "ledger",
        "log_size",
        "log_root",
        "time",
        "origin",
        "genesis_hash",
    }
    assert (head["height"], head["log_size"]) == (1, 3)

    block = api.get("/api/v1/blocks/1").json()
    assert set(block) == {"height", "block_hash", "header", "sig", "checkpoint"}
    assert block["block_hash"] == head["block_hash"]
    assert block["header"]["log_root"] == head["log_root"]
    genesis = api.get("/api/v1/blocks/0").json()
    assert genesis["block_hash"] == head["genesis_hash"]
    assert len(genesis["header"]["tx_ids"]) == 2

    response = api.get("/api/v1/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == local_client.checkpoint()
    checkpoint = open_checkpoint(response.text, node_keys(home), origin=head["origin"])
    assert (checkpoint.size, checkpoint.root.hex()) == (3, head["log_root"])

    older = api.get("/api/v1/checkpoint", params={"size": 2}).text
    assert open_checkpoint(older, node_keys(home)).size == 2


def test_proofs(api: TestClient, home: Home, signer: Signer, make_note: MakeNote) -> None:
    first = make_note(signer, "one")
    post(api, first.leaf)
    for i in range(4):
        post(api, make_note(signer, f"more {i}").leaf)

    old = api.get(f"/api/v1/proofs/inclusion/{first.tx_id}", params={"size": 3}).json()
    assert old["tree_size"] == 3
    check_inclusion(home, old, first.leaf)
    new = api.get(f"/api/v1/proofs/inclusion/{first.tx_id}").json()
    assert new["tree_size"] == 7
    check_inclusion(home, new, first.leaf)

    proof = api.get("/api/v1/proofs/consistency", params={"first": 3, "second": 7}).json()
    assert set(proof) == {"first", "second", "hashes", "first_checkpoint", "second_checkpoint"}
    keys = node_keys(home)
    a = open_checkpoint(proof["first_checkpoint"], keys)
    b = open_checkpoint(proof["second_checkpoint"], keys)
    verify_consistency(3, 7, a.root, b.root, [bytes.fromhex(h) for h in proof["hashes"]])


def test_actor(api: TestClient, home: Home) -> None:
    actor = api.get("/api/v1/actors/admin").json()
    assert actor["actor"] == "admin"
    assert actor["roles"] == ["admin"]
    assert actor["keys"] == [
        {"key_id": home.load_key("admin").key_id, "active": True, "retired": None}
    ]
    assert isinstance(actor["last_nonce"], int)


# -- operations ---------------------------------------------------------------------


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready", "height": 0}


def test_metrics_count_into_the_injected_registry(
    api: TestClient, registry: CollectorRegistry, signer: Signer, make_note: MakeNote
) -> None:
    stx = make_note(signer)
    post(api, stx.leaf)
    assert api.post("/api/v1/transactions", content=stx.leaf).status_code == 409
    assert registry.get_sample_value("opsledger_transactions_accepted_total") == 1
    refused = registry.get_sample_value(
        "opsledger_transactions_refused_total", {"code": "replay_rejected"}
    )
    assert refused == 1
    count = registry.get_sample_value("opsledger_submit_seconds_count", {"endpoint": "single"})
    assert count == 2
    assert registry.get_sample_value("opsledger_head_height") == 1
    assert registry.get_sample_value("opsledger_log_size") == 3
    assert REGISTRY.get_sample_value("opsledger_transactions_accepted_total") is None

    text = api.get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert "opsledger_transactions_accepted_total 1.0" in text.text
    assert 'opsledger_transactions_refused_total{code="replay_rejected"} 1.0' in text.text


def test_two_apps_do_not_share_metrics(local_client: LocalClient) -> None:
    first, second = create_app(local_client), create_app(local_client)
    assert first.state.metrics.registry is not second.state.metrics.registry


# -- the OpenAPI document -----------------------------------------------------------


@pytest.fixture
def openapi(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def test_every_route_is_documented_with_its_errors(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    expected = {
        ("post", "/api/v1/transactions"),
        ("post", "/api/v1/transactions/batch"),
        ("get", "/api/v1/transactions"),
        ("get", "/api/v1/transactions/{tx_id}"),
        ("get", "/api/v1/blocks/{height}"),
        ("get", "/api/v1/head"),
        ("get", "/api/v1/checkpoint"),
        ("get", "/api/v1/proofs/inclusion/{tx_id}"),
        ("get", "/api/v1/proofs/consistency"),
        ("get", "/api/v1/actors/{name}"),
        ("post", "/api/v1/webhooks/github"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    }
    found = {(method, path) for path, ops in paths.items() for method in ops}
    assert found == expected
    for path, ops in paths.items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            if path.startswith("/api/v1"):
                statuses = set(op["responses"])
                assert {"422", "500", "503"} <= statuses, (method, path)
                assert any(s.startswith("4") and s != "422" for s in statuses) or path in (
                    "/api/v1/head",
                ), (method, path)
                for status, response in op["responses"].items():
                    if status.startswith(("4", "5")):
                        schema = response["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    body = paths["/api/v1/transactions"]["post"]["requestBody"]["content"]["application/json"]
    assert "sig" in body["schema"]["required"]
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_time_filters_read_any_rfc3339_form(
    api: TestClient, signer: Signer, make_note: MakeNote
) -> None:
    """A time without milliseconds, or with an offset, means the same instant as the
    stored form: compared raw, ``...:56Z`` would sort after ``...:56.240Z``."""
    stx = make_note(signer)
    post(api, stx.leaf)
    whole_second = stx.tx.ts[:19] + "Z"  # 2026-...T..:..:..Z, at or before the tx
    hour = int(whole_second[11:13])
    offset = f"{whole_second[:11]}{(hour + 1) % 24:02d}{whole_second[13:19]}+01:00"
    for since in (whole_second, offset if hour < 23 else whole_second):
        found = api.get("/api/v1/transactions", params={"since": since, "type": "note"}).json()
        assert [i["tx_id"] for i in found["items"]] == [stx.tx_id], since


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("since", "notadate"),
        ("since", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
        ("until", "9999-12-31T23:59:59-01:00"),  # after year 9999 in UTC
        ("since", "0500-01-01"),  # would not sort as text against 2026-...
    ],
)
def test_a_time_filter_that_is_not_a_usable_time_is_refused(
    api: TestClient, name: str, value: str
) -> None:
    response = api.get("/api/v1/transactions", params={name: value})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == name
