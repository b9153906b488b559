"""Rate limits, API keys, denied methods, safety limits, admin and metrics endpoints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from opsledger.gateway.ratelimit import hash_key
from opsledger.testing.anvil import Anvil
from tests.gateway._support import ALICE, Served, config_for, serving, start_anvils, wait_until

pytestmark = pytest.mark.anvil

KEY = "k-3f9a0c1d2e"


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    (anvil,) = start_anvils(1)
    try:
        anvil.mine(3)
        yield anvil
    finally:
        anvil.stop()


@pytest.fixture(scope="module")
def gw(node: Anvil) -> Iterator[Served]:
    config = config_for(
        [node],
        chain={"allow": ["debug_getRawHeader"]},
        limits={"max_batch": 5, "max_logs_range": 100, "max_body_bytes": 4096},
        rate_limits={
            "tiers": {"pro": {"rps": 1000, "burst": 1000}, "tiny": {"rps": 0.5, "burst": 2}},
            "keys": [
                {"name": "alice", "tier": "pro", "hash": hash_key(KEY)},
                {"name": "bob", "tier": "tiny", "hash": hash_key("bob-key")},
            ],
            "per_ip": {"rps": 1, "burst": 3},
            "method_costs": {"eth_getLogs": 2},
        },
        admin_token_env="GW_TEST_ADMIN_TOKEN",
    )
    os.environ["GW_TEST_ADMIN_TOKEN"] = "t0ken"
    try:
        with serving(config) as served:
            wait_until(lambda: served.gateway.monitors["local"].view.head == 3, what="head 3")
            yield served
    finally:
        os.environ.pop("GW_TEST_ADMIN_TOKEN", None)


def _call(method: str, params: list[object] | None = None) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}


def test_api_key_tier_limits_with_retry_after(gw: Served) -> None:
    path = "/rpc/local/bob-key"
    statuses = [gw.post(_call("eth_chainId"), path=path)[0] for _ in range(2)]
    assert statuses == [200, 200]
    status, headers, reply = gw.post(_call("eth_chainId"), path=path)
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert reply["error"]["code"] == -32005
    # Another key has its own budget; a wrong key is refused.
    assert gw.post(_call("eth_chainId"), path=f"/rpc/local/{KEY}")[0] == 200
    status, _, reply = gw.post(_call("eth_chainId"), path="/rpc/local/nope")
    assert status == 401
    assert reply["error"]["message"] == "unknown API key"


def test_anonymous_use_is_limited_per_ip_with_method_costs(gw: Served) -> None:
    # burst 3: two getLogs at cost 2 do not fit.
    flt = {"fromBlock": "0x0", "toBlock": "0x1"}
    assert gw.post(_call("eth_getLogs", [flt]))[0] == 200
    status, headers, reply = gw.post(_call("eth_getLogs", [flt]))
    assert status == 429
    assert "retry-after" in headers
    assert reply["error"]["code"] == -32005


def test_denied_namespaces_unless_allowed(gw: Served) -> None:
    path = f"/rpc/local/{KEY}"
    for method in ("admin_peers", "debug_traceTransaction", "personal_sign", "miner_start"):
        _, _, reply = gw.post(_call(method), path=path)
        assert reply["error"]["code"] == -32601, method
        assert "not allowed" in reply["error"]["message"]
    for method in ("txpool_content", "engine_newPayloadV1"):
        assert gw.post(_call(method), path=path)[2]["error"]["code"] == -32601
    # Allowed by config: forwarded (anvil may not know it; the error is the node's).
    _, _, reply = gw.post(_call("debug_getRawHeader", ["0x1"]), path=path)
    assert "not allowed" not in json.dumps(reply)


def test_safety_limits(gw: Served) -> None:
    path = f"/rpc/local/{KEY}"
    status, _, reply = gw.post([_call("eth_chainId")] * 6, path=path)
    assert reply["error"]["code"] == -32005
    assert "batch of 6" in reply["error"]["message"]
    flt = {"fromBlock": "0x0", "toBlock": hex(500)}
    reply = gw.post(_call("eth_getLogs", [flt]), path=path)[2]
    assert reply["error"]["code"] == -32005
    assert "exceeds the limit of 100" in reply["error"]["message"]
    status, _, reply = gw.post(b"[" + b" " * 5000 + b"]", path=path)
    assert status == 413
    assert reply["error"]["code"] == -32600
    for bad in (b"", b"nul", b"{]", b"\xff\xfe"):
        status, _, reply = gw.post(bad, path=path)
        assert (status, reply["error"]["code"]) == (200, -32700)
    assert gw.post(b"[]", path=path)[2]["error"]["code"] == -32600
    assert gw.post(b'{"id": 1}', path=path)[2]["error"]["code"] == -32600
    assert gw.post(_call("eth_getBalance", [ALICE]), path="/rpc/nochain")[0] == 404


def test_admin_health_and_metrics(gw: Served) -> None:
    assert gw.get("/healthz")[0] == 200
    assert gw.get("/readyz")[0] == 200
    assert gw.get("/admin/upstreams")[0] == 401
    assert gw.get("/admin/upstreams", {"Authorization": "Bearer wrong"})[0] == 401
    status, body = gw.get("/admin/upstreams", {"Authorization": "Bearer t0ken"})
    assert status == 200
    state = json.loads(body)
    upstream = state["chains"][0]["upstreams"][0]
    assert (upstream["name"], upstream["state"], upstream["in_rotation"]) == ("n0", "healthy", True)
    assert "t0ken" not in body.decode()
    gw.rpc("eth_getBalance", [ALICE, "0x1"], path=f"/rpc/local/{KEY}")
    gw.rpc("eth_getBalance", [ALICE, "0x1"], path=f"/rpc/local/{KEY}")
    status, text = gw.get("/metrics")
    metrics = text.decode()
    assert 'gateway_cache_total{chain="local",result="hit"}' in metrics
    assert 'gateway_requests_total{chain="local",method="eth_getBalance",outcome="ok"}' in metrics
    assert 'gateway_upstream_head{chain="local",upstream="n0"} 3.0' in metrics
    assert "gateway_request_seconds_bucket" in metrics
