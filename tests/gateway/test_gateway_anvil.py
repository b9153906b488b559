"""The gateway in front of real anvil nodes: failover, lag, reorgs, hangs, clients."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from opsledger.testing.anvil import Anvil
from tests.gateway._support import ALICE, config_for, serving, start_anvils, wait_until

pytestmark = pytest.mark.anvil


@pytest.fixture
def three() -> Iterator[list[Anvil]]:
    nodes = start_anvils(3)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def two() -> Iterator[list[Anvil]]:
    nodes = start_anvils(2)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _mine_all(nodes: list[Anvil], blocks: int) -> None:
    for node in nodes:
        node.mine(blocks)


def test_batch_is_answered_in_order_with_denied_items(two: list[Anvil]) -> None:
    _mine_all(two, 3)
    with serving(config_for(two)) as gw:
        wait_until(lambda: gw.gateway.monitors["local"].view.head == 3, what="head 3")
        batch = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_getBlockByNumber", "params": [hex(i), False]}
            for i in range(4)
        ]
        batch.insert(2, {"jsonrpc": "2.0", "id": "deny", "method": "debug_traceBlockByNumber"})
        batch.append({"jsonrpc": "2.0", "method": "eth_blockNumber"})  # notification
        status, _, reply = gw.post(batch)
        assert status == 200
        assert [item["id"] for item in reply] == [0, 1, "deny", 2, 3]
        assert [int(item["result"]["number"], 16) for item in reply if "result" in item] == [
            0,
            1,
            2,
            3,
        ]
        assert reply[2]["error"]["code"] == -32601
        # Bad JSON is a parse error, not a traceback; tags resolve against the view.
        status, _, bad = gw.post(b'{"jsonrpc": "2.0", "id": 1, "meth')
        assert status == 200
        assert bad["error"]["code"] == -32700
        assert gw.rpc("eth_getBlockByNumber", ["latest", False])["number"] == "0x3"
        assert gw.rpc("eth_getBlockByNumber", ["finalized", False])["number"] == "0x1"
        assert gw.rpc("eth_getBlockByNumber", ["0x50", False]) is None


def test_killing_a_node_under_read_load_is_invisible(three: list[Anvil]) -> None:
    _mine_all(three, 5)
    with serving(config_for(three)) as gw:
        wait_until(lambda: gw.gateway.monitors["local"].view.head == 5, what="head 5")
        calls: list[tuple[str, list[Any]]] = [
            ("eth_blockNumber", []),
            ("eth_getBalance", [ALICE, "latest"]),
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_getTransactionCount", [ALICE, "latest"]),
            ("eth_chainId", []),
        ]

        # A fixed number of reads per worker; every worker pauses after its first ten
        # until the node is killed (a barrier, not a sleep), so the other fifty of each
        # certainly run after the kill.
        before, after = 10, 50
        killed = threading.Barrier(8, action=three[0].kill, timeout=60)

        def load(worker: int) -> list[str]:
            errors: list[str] = []
            for done in range(before + after):
                if done == before:
                    killed.wait()
                method, params = calls[(worker + done) % len(calls)]
                status, _, reply = gw.post(
                    {"jsonrpc": "2.0", "id": done, "method": method, "params": params}
                )
                if status != 200 or "error" in reply or reply.get("result") is None:
                    errors.append(f"{method}: {status} {reply}")
            return errors

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(load, w) for w in range(8)]
            errors = [e for f in futures for e in f.result()]
        assert three[0].process.poll() is not None  # the node really died mid-load
        assert errors == []
        wait_until(lambda: not gw.gateway.proxies["local"].upstreams[0].in_rotation, what="n0 out")


def test_a_stalled_node_leaves_rotation_and_comes_back(two: list[Anvil]) -> None:
    stalled, live = two
    _mine_all(two, 2)
    config = config_for(two, health={"max_lag_blocks": 2})
    with serving(config) as gw:
        upstream = gw.gateway.proxies["local"].upstreams[0]
        wait_until(lambda: upstream.in_rotation, what="n0 in rotation")
        live.mine(5)  # only the live node advances
        wait_until(lambda: not upstream.in_rotation, what="n0 out of rotation")
        assert upstream.state == "lagging"
        # Heads never go backwards and the advertised head is never answered null.
        for _ in range(20):
            assert gw.rpc("eth_blockNumber") == "0x7"
            assert gw.rpc("eth_getBlockByNumber", ["latest", False])["number"] == "0x7"
        stalled.mine(5)
        wait_until(lambda: upstream.in_rotation, what="n0 back in rotation")


def test_a_reorg_never_serves_stale_cached_blocks(two: list[Anvil]) -> None:
    node = two[0]
    node.mine(2)
    snapshot = node.rpc("evm_snapshot")
    node.mine(4)  # head 6; blocks 3..4 are final with finality_depth 2: cached for good
    with serving(config_for([node])) as gw:
        view = gw.gateway.monitors["local"].view
        wait_until(lambda: view.head == 6, what="head 6")
        before = gw.rpc("eth_getBlockByNumber", ["0x3", False])["hash"]
        assert gw.rpc("eth_getBlockByNumber", ["0x3", False])["hash"] == before  # cached
        assert gw.gateway.metrics.cache.labels("local", "hit").value >= 1
        node.rpc("evm_revert", [snapshot])
        node.rpc("anvil_setNextBlockTimestamp", [1800000000])
        node.mine(6)  # head 8: a longer branch, every block above 2 replaced
        wait_until(lambda: view.reorgs >= 1 and view.head == 8, what="reorg seen")
        after = gw.rpc("eth_getBlockByNumber", ["0x3", False])["hash"]
        assert after != before
        assert after == node.rpc("eth_getBlockByNumber", ["0x3", False])["hash"]


def test_a_hung_node_never_fails_a_read(two: list[Anvil]) -> None:
    _mine_all(two, 2)
    config = config_for(two, limits={"request_timeout_s": 3.0})
    with serving(config) as gw:
        wait_until(lambda: all(u.in_rotation for u in gw.gateway.proxies["local"].upstreams))
        for i in range(20):  # warm the latency estimates
            gw.rpc("eth_getBalance", [ALICE, hex(i % 3)])
        two[0].pause()
        try:
            # A request that waited on the hung node past the request budget would come
            # back as an error: every read is answered by the live node instead. (How
            # long it takes is measured in bench/gateway.py, not asserted here.)
            for i in range(30):
                assert gw.rpc("eth_getTransactionCount", [ALICE, hex(i % 3)]) == "0x0"
            upstream = gw.gateway.proxies["local"].upstreams[0]
            wait_until(lambda: not upstream.in_rotation, what="hung node out")
        finally:
            two[0].resume()


def test_web3_py_works_unchanged(two: list[Anvil]) -> None:
    from web3 import Web3

    with serving(config_for(two[:1])) as gw:
        w3: Any = Web3(Web3.HTTPProvider(gw.url(), request_kwargs={"timeout": 10}))
        assert w3.is_connected()
        assert w3.eth.chain_id == 31337
        bob = w3.eth.accounts[1]
        before = w3.eth.get_balance(bob)
        tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": bob, "value": 10**18})
        receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=10)
        assert receipt["status"] == 1
        assert w3.eth.get_balance(bob) == before + 10**18
        assert w3.eth.get_block("latest")["number"] >= receipt["blockNumber"]


def test_ethers_js_works_unchanged(two: list[Anvil]) -> None:
    script = Path(__file__).with_name("js") / "ethers_check.mjs"
    # node resolves ethers from tests/gateway/js/node_modules or any parent's (the root).
    if not any((folder / "node_modules" / "ethers").is_dir() for folder in script.parents):
        pytest.fail("ethers missing: `make setup` (root package.json) or npm install ethers@6")
    with serving(config_for(two[:1])) as gw:
        result = subprocess.run(
            ["node", str(script), gw.url()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "chainId": "31337",
        "status": 1,
        "delta": str(10**18),
        "headAtLeastReceipt": True,
    }


def test_a_lagging_node_in_rotation_never_serves_backward_heads_or_nulls(
    two: list[Anvil],
) -> None:
    ahead = two[1]  # two[0] stays behind
    config = config_for(two, health={"max_lag_blocks": 50})
    with serving(config) as gw:
        upstreams = gw.gateway.proxies["local"].upstreams
        wait_until(lambda: all(u.in_rotation for u in upstreams), what="both in rotation")
        ahead.mine(4)  # the other node stays 4 behind but inside the lag threshold
        wait_until(lambda: gw.gateway.monitors["local"].view.head == 4, what="head 4")
        assert upstreams[0].in_rotation  # still serving: a generic balancer's situation
        heads = [int(gw.rpc("eth_blockNumber"), 16) for _ in range(30)]
        assert heads == sorted(heads)
        assert min(heads) == 4
        for _ in range(30):
            block = gw.rpc("eth_getBlockByNumber", ["latest", False])
            assert block is not None
            assert block["number"] == "0x4"
            assert gw.rpc("eth_getBlockByNumber", ["0x3", False]) is not None
