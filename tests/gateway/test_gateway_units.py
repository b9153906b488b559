"""Unit tests: method table, cache policy and LRU, router, breaker, limits, parsing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsledger.core import ConfigError
from opsledger.gateway.cache import MemoryCache, cache_key, cache_policy, storable
from opsledger.gateway.coalesce import Coalescer
from opsledger.gateway.config import DEFAULT_DENIED, HealthConfig, UpstreamConfig, parse_config
from opsledger.gateway.methods import Kind, classify
from opsledger.gateway.ratelimit import TokenBucket, hash_key
from opsledger.gateway.router import Router
from opsledger.gateway.service import Gateway
from opsledger.gateway.upstream import Breaker, Upstream

GENESIS = "0x" + "ab" * 32


def _upstream(name: str, head: int, **config: Any) -> Upstream:
    upstream = Upstream(
        UpstreamConfig(name=name, url="http://127.0.0.1:1", **config), HealthConfig()
    )
    upstream.probed = upstream.genesis_checked = True
    upstream.head = head
    return upstream


def test_method_classes() -> None:
    assert classify("eth_sendRawTransaction").kind is Kind.WRITE
    assert classify("eth_getBalance").kind is Kind.READ
    assert classify("eth_getBalance").block_param == 1
    assert classify("eth_newFilter").kind is Kind.STATEFUL
    for method in ("admin_peers", "debug_traceCall", "engine_forkchoiceUpdatedV3", "txpool_status"):
        assert classify(method, denied=DEFAULT_DENIED).kind is Kind.DENIED
    allowed = classify("debug_traceCall", denied=DEFAULT_DENIED, allowed=["debug"])
    assert allowed.kind is Kind.READ
    assert classify("eth_getLogs").cost > classify("eth_blockNumber").cost


def test_cache_policy_is_finality_aware() -> None:
    finalized = 10
    final = cache_policy("eth_getBlockByNumber", ["0xa", False], finalized)
    assert (final.cacheable, final.block, final.scoped) == (True, 10, False)
    fresh = cache_policy("eth_getBalance", ["0x1", "0xb"], finalized)
    assert (fresh.cacheable, fresh.block, fresh.scoped) == (True, 11, True)
    assert not cache_policy("eth_getBalance", ["0x1", "pending"], finalized).cacheable
    assert not cache_policy("eth_sendRawTransaction", ["0x00"], finalized).cacheable
    by_hash = cache_policy("eth_getBlockByHash", ["0x" + "1" * 64, False], finalized)
    assert by_hash.cacheable and by_hash.block is None
    logs = cache_policy("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x20"}], finalized)
    assert (logs.block, logs.scoped) == (32, True)
    # Nulls, unfinal empties and unfinal receipts are never stored.
    assert not storable("eth_getBlockByNumber", final, None, finalized).cacheable
    assert not storable("eth_getLogs", logs, [], finalized).cacheable
    receipt = cache_policy("eth_getTransactionReceipt", ["0x" + "2" * 64], finalized)
    assert not storable("eth_getTransactionReceipt", receipt, {"blockNumber": "0xc"}, 10).cacheable
    kept = storable("eth_getTransactionReceipt", receipt, {"blockNumber": "0x9"}, 10)
    assert (kept.cacheable, kept.block) == (True, 9)


def test_cache_keys_carry_the_genesis_not_the_chain_id() -> None:
    params = [{"fromBlock": "0x1", "toBlock": "0x2"}]
    one = cache_key("0x" + "01" * 32, "eth_getLogs", params, None)
    two = cache_key("0x" + "02" * 32, "eth_getLogs", params, None)
    assert one != two
    assert cache_key(GENESIS, "eth_blockNumber", [], "5:0xa:0") != cache_key(
        GENESIS, "eth_blockNumber", [], "6:0xb:0"
    )


def test_memory_cache_is_bounded_by_bytes_and_drops_from_a_fork() -> None:
    async def scenario() -> None:
        cache = MemoryCache(max_bytes=1000)
        for block in range(20):
            await cache.set(f"{GENESIS}|m|{block}", b"x" * 90, block)
        assert cache.size <= 1000
        assert await cache.get(f"{GENESIS}|m|0") is None  # evicted, least recently used
        assert await cache.get(f"{GENESIS}|m|19") is not None
        await cache.set("0xother|m|19", b"y", 19)
        dropped = await cache.drop_from(GENESIS, 17)
        assert dropped == 3
        assert await cache.get(f"{GENESIS}|m|17") is None
        assert await cache.get(f"{GENESIS}|m|16") is not None
        assert await cache.get("0xother|m|19") == b"y"  # another chain is untouched

    asyncio.run(scenario())


def test_router_never_sends_a_block_above_an_upstreams_head() -> None:
    fresh, stale = _upstream("fresh", 7), _upstream("stale", 0)
    router = Router([fresh, stale], rng=random.Random(1))
    assert {router.choose(min_head=7).name for _ in range(50)} == {"fresh"}  # type: ignore[union-attr]
    assert {router.choose().name for _ in range(200)} == {"fresh", "stale"}  # type: ignore[union-attr]
    assert router.choose(min_head=8) is None


def test_router_prefers_own_nodes_archive_tags_and_funded_budgets() -> None:
    own = _upstream("own", 10)
    provider = _upstream("provider", 10, priority=1, cu_per_second=10)
    archive = _upstream("archive", 10, tags=("archive",), priority=1)
    router = Router([own, provider, archive], rng=random.Random(2))
    assert {router.choose().name for _ in range(50)} == {"own"}  # type: ignore[union-attr]
    assert router.choose(archive=True).name == "archive"  # type: ignore[union-attr]
    own.lagging = True
    names = {router.choose(cost=5).name for _ in range(50)}  # type: ignore[union-attr]
    assert names <= {"provider", "archive"}
    assert provider.budget is not None
    provider.budget.take(10)  # quota spent: the provider is skipped while others serve
    assert {router.choose(cost=5).name for _ in range(20)} == {"archive"}  # type: ignore[union-attr]


def test_router_power_of_two_choices_avoids_the_slow_node() -> None:
    fast, slow = _upstream("fast", 1), _upstream("slow", 1)
    fast.ewma_ms, slow.ewma_ms = 1.0, 200.0
    router = Router([fast, slow], rng=random.Random(3))
    assert {router.choose().name for _ in range(50)} == {"fast"}  # type: ignore[union-attr]


def test_circuit_breaker_opens_and_half_opens() -> None:
    upstream = _upstream("a", 1)
    for _ in range(3):
        upstream.failed(now=100.0)
    assert upstream.breaker is Breaker.OPEN
    assert not upstream.in_rotation
    assert not upstream.may_probe(now=101.0)
    assert upstream.may_probe(now=102.5)
    assert upstream.state == "half_open"
    upstream.failed(now=103.0)  # a failed half-open probe opens it again at once
    assert upstream.breaker is Breaker.OPEN
    assert upstream.may_probe(now=106.0)
    upstream.succeeded()
    assert upstream.in_rotation


def test_reorg_detection_from_parent_hashes() -> None:
    upstream = _upstream("a", -1)
    assert upstream.check_reorg(5, "0x5a", "0x4a") is None
    assert upstream.check_reorg(6, "0x6a", "0x5a") is None
    assert upstream.check_reorg(6, "0x6b", "0x5b") == 5
    assert upstream.check_reorg(7, "0x7b", "0x6b") is None


def test_token_bucket_and_key_hashing() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0)
    assert bucket.take(1, now=bucket.updated) == 0.0
    assert bucket.take(1, now=bucket.updated) == 0.0
    assert bucket.take(1, now=bucket.updated) == pytest.approx(0.5)
    assert hash_key("abc").startswith("sha256:")
    assert hash_key("abc") != hash_key("abd")


def test_coalescer_shares_one_call() -> None:
    calls = 0

    async def scenario() -> list[tuple[int, bool]]:
        coalescer = Coalescer()
        gate = asyncio.Event()

        async def call() -> int:
            nonlocal calls
            calls += 1
            await gate.wait()
            return 42

        tasks = [asyncio.create_task(coalescer.run("k", call)) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(scenario())
    assert calls == 1
    assert [r[0] for r in results] == [42] * 5
    assert sum(shared for _, shared in results) == 4


def test_config_defaults_and_errors() -> None:
    config = parse_config(
        {
            "chains": [
                {"name": "local", "chain_id": 1, "upstreams": [{"name": "a", "url": "http://h:1"}]}
            ]
        }
    )
    assert config.listen == "127.0.0.1:8545"
    assert config.health.interval_s == 1.0
    assert config.health.max_lag_blocks == 3
    with pytest.raises(
        ConfigError, match=r"gateway.chains\[0\].upstreams\[0\].weight: must be >= 0"
    ):
        parse_config(
            {
                "chains": [
                    {
                        "name": "l",
                        "chain_id": 1,
                        "upstreams": [{"name": "a", "url": "http://h", "weight": -1}],
                    }
                ]
            }
        )
    with pytest.raises(ConfigError, match="upstream name 'a' is used twice"):
        parse_config(
            {
                "chains": [
                    {
                        "name": "l",
                        "chain_id": 1,
                        "upstreams": [
                            {"name": "a", "url": "http://h"},
                            {"name": "a", "url": "http://g"},
                        ],
                    }
                ]
            }
        )
    with pytest.raises(ConfigError, match=r"rate_limits.keys\[0\].tier"):
        parse_config(
            {
                "chains": [
                    {"name": "l", "chain_id": 1, "upstreams": [{"name": "a", "url": "http://h"}]}
                ],
                "rate_limits": {"keys": [{"name": "k", "hash": hash_key("x"), "tier": "gold"}]},
            }
        )


_OFFLINE = Gateway(
    parse_config(
        {
            "chains": [
                {"name": "local", "chain_id": 1, "upstreams": [{"name": "a", "url": "http://h"}]}
            ]
        }
    )
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": _json,
        "method": st.sampled_from(["eth_chainId", "admin_peers", "eth_getLogs", ""]) | _json,
        "params": _json,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=64)
    | _json.map(lambda v: json.dumps(v).encode())
    | _requests.map(lambda v: json.dumps(v).encode())
    | st.lists(_requests, min_size=1, max_size=4).map(lambda v: json.dumps(v).encode())
)
def test_any_body_gets_a_json_rpc_answer_never_a_traceback(body: bytes) -> None:
    reply = asyncio.run(_OFFLINE.handle_rpc("local", body))
    decoded = json.loads(reply)
    if decoded is None:
        return  # only notifications
    for item in decoded if isinstance(decoded, list) else [decoded]:
        assert item["jsonrpc"] == "2.0"
        assert "id" in item
        assert ("result" in item) != ("error" in item)
        if "error" in item:
            assert isinstance(item["error"]["code"], int)
            assert isinstance(item["error"]["message"], str)


def _scripted(answers: dict[str, list[Any]]) -> tuple[Gateway, list[str]]:
    """An offline gateway whose upstreams answer from a script (bytes or an exception)."""
    config = parse_config(
        {
            "chains": [
                {
                    "name": "local",
                    "chain_id": 1,
                    "upstreams": [
                        {"name": n, "url": f"http://h:{i + 1}"} for i, n in enumerate(answers)
                    ],
                }
            ],
            "limits": {"hedge": False},
        }
    )
    gateway = Gateway(config)
    calls: list[str] = []
    for upstream in gateway.proxies["local"].upstreams:
        upstream.probed = upstream.genesis_checked = True
        upstream.head = 10
        script = answers[upstream.name]

        async def post(
            body: bytes, timeout: float, name: str = upstream.name, script: list[Any] = script
        ) -> bytes:
            if not script:  # health probes after the scripted calls
                return b'{"jsonrpc":"2.0","id":1,"result":null}'
            calls.append(name)
            answer = script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return bytes(answer)

        upstream.post = post  # type: ignore[method-assign]
    gateway.proxies["local"].view.head = 10
    return gateway, calls


SEND = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": ["0x01"]}
)
OK_HASH = b'{"jsonrpc":"2.0","id":1,"result":"0xabc"}'


def test_a_write_that_may_have_been_sent_is_never_retried() -> None:
    from opsledger.gateway.upstream import UpstreamFailure

    gateway, calls = _scripted(
        {"a": [UpstreamFailure("timed out")], "b": [UpstreamFailure("timed out")]}
    )
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", SEND.encode())))
    assert len(calls) == 1
    assert "not retried" in reply["error"]["message"]


def test_a_write_that_never_left_goes_to_another_upstream() -> None:
    from opsledger.gateway.upstream import UpstreamFailure

    refused = UpstreamFailure("connection refused", sent=False)
    shared: list[Any] = [refused, OK_HASH]  # whichever is chosen first refuses
    gateway, calls = _scripted({"a": shared, "b": shared})
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", SEND.encode())))
    assert reply["result"] == "0xabc"
    assert len(calls) == 2
    assert calls[0] != calls[1]


def test_reads_fail_over_on_errors_meaning_behind_but_not_on_reverts() -> None:
    behind = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"header not found"}}'
    revert = b'{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted"}}'
    ok = b'{"jsonrpc":"2.0","id":1,"result":"0x2a"}'
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "eth_call",
        "params": [{"to": "0x" + "1" * 40}, "0x5"],
    }
    gateway, calls = _scripted({"a": [behind, behind], "b": [ok, ok]})
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", json.dumps(call).encode())))
    assert reply == {"jsonrpc": "2.0", "id": 5, "result": "0x2a"}
    gateway, calls = _scripted({"a": [revert], "b": [revert]})
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", json.dumps(call).encode())))
    assert reply["error"] == {"code": 3, "message": "execution reverted"}
    assert len(calls) == 1


def test_broadcast_writes_return_the_first_success() -> None:
    from opsledger.gateway.upstream import UpstreamFailure

    gateway, calls = _scripted({"a": [UpstreamFailure("boom")], "b": [OK_HASH]})
    proxy = gateway.proxies["local"]
    proxy.chain = dataclasses.replace(proxy.chain, broadcast_writes=True)
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", SEND.encode())))
    assert reply["result"] == "0xabc"
    assert sorted(calls) == ["a", "b"]


def test_a_batch_is_one_upstream_call_per_upstream_and_keeps_its_order() -> None:
    config = parse_config(
        {
            "chains": [
                {"name": "local", "chain_id": 1, "upstreams": [{"name": "a", "url": "http://h:1"}]}
            ],
            "limits": {"hedge": False},
        }
    )
    gateway = Gateway(config)
    proxy = gateway.proxies["local"]
    (upstream,) = proxy.upstreams
    upstream.probed = upstream.genesis_checked = True
    upstream.head = 10
    proxy.view.head = 10
    bodies: list[Any] = []

    async def post(body: bytes, timeout: float) -> bytes:
        request = json.loads(body)
        bodies.append(request)
        items = request if isinstance(request, list) else [request]
        replies = []
        for item in reversed(items):  # a node may answer a batch in any order
            if item["params"] and item["params"][0] == "0xbad":
                replies.append(
                    {
                        "jsonrpc": "2.0",
                        "id": item["id"],
                        "error": {"code": -32000, "message": "header not found"},
                    }
                )
            else:
                replies.append({"jsonrpc": "2.0", "id": item["id"], "result": item["params"][0]})
        return json.dumps(replies if isinstance(request, list) else replies[0]).encode()

    upstream.post = post  # type: ignore[method-assign]
    batch = [
        {"jsonrpc": "2.0", "id": f"q{i}", "method": "eth_getCode", "params": [value, "0x5"]}
        for i, value in enumerate(["0x1", "0x2", "0xbad", "0x3"])
    ]
    batch.insert(1, {"jsonrpc": "2.0", "id": "d", "method": "admin_peers"})
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", json.dumps(batch).encode())))
    assert [r["id"] for r in reply] == ["q0", "d", "q1", "q2", "q3"]
    assert [r.get("result") for r in reply] == ["0x1", None, "0x2", None, "0x3"]
    assert reply[3]["error"]["message"] == "header not found"  # retried alone, then answered
    assert isinstance(bodies[0], list)
    assert len(bodies[0]) == 4  # one upstream batch for the four reads


def test_a_null_from_a_lagging_node_is_asked_again_and_a_real_null_is_kept() -> None:
    null = b'{"jsonrpc":"2.0","id":1,"result":null}'
    receipt = b'{"jsonrpc":"2.0","id":1,"result":{"blockNumber":"0xa","status":"0x1"}}'
    query = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "eth_getTransactionReceipt",
        "params": ["0x" + "3" * 64],
    }
    gateway, calls = _scripted({"a": [null, null], "b": [receipt, null]})
    proxy = gateway.proxies["local"]
    proxy.upstreams[0].head = 9  # a lags: its null may only mean "not yet"
    # Whichever is asked first, the answer is b's receipt, never a's "not yet" null.
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", json.dumps(query).encode())))
    assert calls[-1] == "b"
    assert reply["result"] == {"blockNumber": "0xa", "status": "0x1"}
    gateway, calls = _scripted({"a": [null, null], "b": [null, null]})
    gateway.proxies["local"].upstreams[0].head = 9
    reply = json.loads(asyncio.run(gateway.handle_rpc("local", json.dumps(query).encode())))
    assert reply == {"jsonrpc": "2.0", "id": 9, "result": None}


@pytest.mark.parametrize(
    "method",
    [
        "admin_peers",
        "Admin_peers",
        "ADMIN_addPeer",
        "Debug_setHead",
        "anvil_setBalance",
        "evm_revert",
        "hardhat_reset",
        "eth_sign",
        "ETH_SIGNTRANSACTION",
    ],
)
def test_dangerous_methods_are_denied_by_default_whatever_their_case(method: str) -> None:
    from opsledger.gateway.config import DEFAULT_DENIED
    from opsledger.gateway.methods import Kind, classify

    assert classify(method, denied=DEFAULT_DENIED).kind is Kind.DENIED
    assert classify(method, denied=DEFAULT_DENIED, allowed=[method]).kind is not Kind.DENIED


def test_unknown_methods_outside_the_read_namespaces_are_never_retried() -> None:
    from opsledger.gateway.config import DEFAULT_DENIED
    from opsledger.gateway.methods import Kind, classify

    assert classify("parity_nodeKind", denied=DEFAULT_DENIED).kind is Kind.STATEFUL
    assert classify("eth_chainId", denied=DEFAULT_DENIED).kind is Kind.READ


def test_a_final_read_in_flight_across_a_reorg_is_answered_but_not_cached() -> None:
    block = b'{"jsonrpc":"2.0","id":1,"result":{"number":"0x2","hash":"0x01"}}'
    gateway, calls = _scripted({"a": [block, block, block]})
    proxy = gateway.proxies["local"]
    proxy.view.genesis = GENESIS
    proxy.view.head = proxy.upstreams[0].head = 100  # block 2 is final: cached for good
    scripted = proxy.upstreams[0].post

    def query(number: str) -> bytes:
        call = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": [number]}
        return json.dumps(call).encode()

    async def scenario() -> None:
        # Control: a final block read twice goes upstream once.
        await gateway.handle_rpc("local", query("0x1"))
        await gateway.handle_rpc("local", query("0x1"))
        assert calls == ["a"]

        async def reorg_meanwhile(body: bytes, timeout: float) -> bytes:
            proxy.view.rewind(1, 100, None)  # a deep reorg, detected while in flight
            return await scripted(body, timeout)

        proxy.upstreams[0].post = reorg_meanwhile  # type: ignore[method-assign]
        reply = json.loads(await gateway.handle_rpc("local", query("0x2")))
        assert reply["result"]["number"] == "0x2"  # answered...
        proxy.upstreams[0].post = scripted  # type: ignore[method-assign]
        await gateway.handle_rpc("local", query("0x2"))
        assert calls == ["a", "a", "a"]  # ...but not cached: asked again

    asyncio.run(scenario())


def _batching(
    answer: Any, *, upstream_batch: int = 32, names: tuple[str, ...] = ("a",)
) -> tuple[Gateway, list[Any]]:
    """An offline gateway whose upstreams answer JSON-RPC (single or batch) by ``answer``."""
    config = parse_config(
        {
            "chains": [
                {
                    "name": "local",
                    "chain_id": 1,
                    "upstreams": [
                        {"name": n, "url": f"http://h:{i + 1}"} for i, n in enumerate(names)
                    ],
                }
            ],
            "limits": {"hedge": False, "upstream_batch": upstream_batch},
        }
    )
    gateway = Gateway(config)
    bodies: list[Any] = []
    for upstream in gateway.proxies["local"].upstreams:
        upstream.probed = upstream.genesis_checked = True
        upstream.head = 10

        async def post(body: bytes, timeout: float, name: str = upstream.name) -> bytes:
            request = json.loads(body)
            bodies.append((name, request))
            return json.dumps(answer(name, request)).encode()

        upstream.post = post  # type: ignore[method-assign]
    gateway.proxies["local"].view.head = 10
    return gateway, bodies


def _balance(i: int) -> bytes:
    call = {"jsonrpc": "2.0", "id": f"c{i}", "method": "eth_getBalance", "params": [f"0x{i:x}"]}
    return json.dumps(call).encode()


async def _concurrently(gateway: Gateway, count: int) -> list[Any]:
    replies = await asyncio.gather(
        *(gateway.handle_rpc("local", _balance(i)) for i in range(count))
    )
    return [json.loads(r) for r in replies]


def _echo(name: str, request: Any) -> Any:
    def one(item: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": item["id"], "result": item["params"][0]}

    return [one(i) for i in reversed(request)] if isinstance(request, list) else one(request)


def test_reads_due_together_go_upstream_as_one_batch_and_keep_their_answers() -> None:
    gateway, bodies = _batching(_echo)
    replies = asyncio.run(_concurrently(gateway, 5))
    assert [r["id"] for r in replies] == [f"c{i}" for i in range(5)]
    assert [r["result"] for r in replies] == [f"0x{i:x}" for i in range(5)]
    assert len(bodies) == 1 and isinstance(bodies[0][1], list) and len(bodies[0][1]) == 5
    # A lone read goes alone, as before.
    gateway, bodies = _batching(_echo)
    assert asyncio.run(_concurrently(gateway, 1))[0]["result"] == "0x0"
    assert isinstance(bodies[0][1], dict)
    # upstream_batch: 1 turns batching off; a bound splits larger groups.
    gateway, bodies = _batching(_echo, upstream_batch=1)
    asyncio.run(_concurrently(gateway, 3))
    assert [isinstance(b, dict) for _, b in bodies] == [True, True, True]
    gateway, bodies = _batching(_echo, upstream_batch=2)
    asyncio.run(_concurrently(gateway, 5))
    assert sorted(len(b) if isinstance(b, list) else 1 for _, b in bodies) == [1, 2, 2]


def test_an_upstream_without_batches_gets_reads_one_by_one() -> None:
    def no_batches(name: str, request: Any) -> Any:
        if isinstance(request, list):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}}
        return _echo(name, request)

    gateway, bodies = _batching(no_batches)
    replies = asyncio.run(_concurrently(gateway, 4))
    assert [r["result"] for r in replies] == [f"0x{i:x}" for i in range(4)]
    assert [isinstance(b, list) for _, b in bodies] == [True, False, False, False, False]
    asyncio.run(_concurrently(gateway, 3))  # from now on: singles only
    assert all(isinstance(b, dict) for _, b in bodies[5:])


def test_a_read_missing_from_a_batch_answer_is_asked_elsewhere() -> None:
    def drops_one(name: str, request: Any) -> Any:
        if isinstance(request, list):  # "a" forgets the read of 0x1
            return [r for r in _echo(name, request) if r["result"] != "0x1"]
        return _echo(name, request)

    gateway, bodies = _batching(drops_one, names=("a", "b"))
    for upstream in gateway.proxies["local"].upstreams:
        upstream.ewma_ms = 1.0 if upstream.name == "a" else 100.0  # "a" is chosen first
    replies = asyncio.run(_concurrently(gateway, 3))
    assert [r["result"] for r in replies] == ["0x0", "0x1", "0x2"]
    assert bodies[-1] == ("b", json.loads(_balance(1)) | {"id": 1, "params": ["0x1", "0xa"]})


def _hedging(
    delays: dict[str, float], fails: tuple[str, ...] = (), hedge_ms: float = 5
) -> tuple[Gateway, Any]:
    """Two upstreams ("a" chosen first) answering after ``delays`` seconds with their own
    value; those in ``fails`` fail instead. Hedges fire after ``hedge_ms``."""
    from opsledger.gateway.upstream import UpstreamFailure

    config = parse_config(
        {
            "chains": [
                {
                    "name": "local",
                    "chain_id": 1,
                    "upstreams": [
                        {"name": "a", "url": "http://h:1"},
                        {"name": "b", "url": "http://h:2"},
                    ],
                }
            ],
            "limits": {"hedge_min_ms": hedge_ms},
        }
    )
    gateway = Gateway(config)
    proxy = gateway.proxies["local"]
    for upstream in proxy.upstreams:
        upstream.probed = upstream.genesis_checked = True
        upstream.head = 10
        upstream.ewma_ms = 1.0 if upstream.name == "a" else 2.0

        async def post(body: bytes, timeout: float, name: str = upstream.name) -> bytes:
            await asyncio.sleep(delays[name])
            if name in fails:
                raise UpstreamFailure(f"{name} broke")
            request = json.loads(body)
            return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": name}).encode()

        upstream.post = post  # type: ignore[method-assign]
    proxy.view.head = 10

    async def ask() -> Any:
        reply = json.loads(await gateway.handle_rpc("local", _balance(1)))
        await asyncio.sleep(max(delays.values()))  # let the loser finish (no stray errors)
        return reply

    return gateway, ask


def _hedges(gateway: Gateway, winner: str) -> float:
    return gateway.metrics.hedges.labels("local", "eth_getBalance", winner).value


def test_a_slow_read_is_hedged_and_the_first_good_answer_wins() -> None:
    gateway, ask = _hedging({"a": 0.5, "b": 0.0})
    assert asyncio.run(ask())["result"] == "b"  # the hedge answered first
    assert _hedges(gateway, "hedge") == 1
    gateway, ask = _hedging({"a": 0.05, "b": 0.5})
    assert asyncio.run(ask())["result"] == "a"  # hedged, but the primary came back first
    assert _hedges(gateway, "primary") == 1
    gateway, ask = _hedging({"a": 0.05, "b": 0.1}, fails=("a",))
    assert asyncio.run(ask())["result"] == "b"  # the primary failed, the hedge answered
    gateway, ask = _hedging({"a": 0.0, "b": 0.0}, hedge_ms=5000)
    assert asyncio.run(ask())["result"] == "a"  # answered before the delay: no hedge
    assert _hedges(gateway, "hedge") == _hedges(gateway, "primary") == 0
