"""The WebSocket route of the server: G2's hub mounted at /rpc/{chain}, other calls
answered through the HTTP proxy path."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from tests.gateway._support import config_for, serving, start_anvils, wait_until

pytestmark = pytest.mark.anvil


def test_websocket_subscription_and_calls_through_the_gateway() -> None:
    nodes = start_anvils(1)
    try:
        with serving(config_for(nodes)) as gw:
            wait_until(lambda: gw.gateway.monitors["local"].view.head == 0, what="head 0")
            ws_url = gw.url().replace("http://", "ws://")

            async def scenario() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
                async with connect(ws_url, open_timeout=10) as ws:
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}))
                    chain_id = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "admin_peers"}))
                    denied = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    # the HTTP path's batch limit holds on the socket too
                    call = {"jsonrpc": "2.0", "id": 9, "method": "eth_chainId"}
                    await ws.send(json.dumps([call] * 101))
                    too_big = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert too_big["error"]["code"] == -32600, too_big
                    await ws.send(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": 3,
                                "method": "eth_subscribe",
                                "params": ["newHeads"],
                            }
                        )
                    )
                    json.loads(await asyncio.wait_for(ws.recv(), 10))
                    await asyncio.to_thread(nodes[0].mine, 1)
                    head = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    return chain_id, denied, head

            chain_id, denied, head = asyncio.run(asyncio.wait_for(scenario(), 30))
            assert chain_id["result"] == "0x7a69"
            assert denied["error"]["code"] == -32601  # type: ignore[index]
            assert head["method"] == "eth_subscription"
            assert head["params"]["result"]["number"] == "0x1"  # type: ignore[index]
            # The hub's heads reach the gateway's view (on_new_head).
            wait_until(lambda: gw.gateway.monitors["local"].view.head == 1, what="head 1")
    finally:
        for node in nodes:
            node.stop()


def test_websocket_calls_are_rate_limited_like_http() -> None:
    nodes = start_anvils(1)
    try:
        config = config_for(nodes, rate_limits={"per_ip": {"rps": 0.5, "burst": 2}})
        with serving(config) as gw:
            wait_until(lambda: gw.gateway.monitors["local"].view.head == 0, what="head 0")
            ws_url = gw.url().replace("http://", "ws://")

            async def scenario() -> list[dict[str, object]]:
                async with connect(ws_url, open_timeout=10) as ws:
                    replies = []
                    for i in range(3):
                        call = {"jsonrpc": "2.0", "id": i, "method": "eth_chainId"}
                        await ws.send(json.dumps(call))
                        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
                    subscribe = {
                        "jsonrpc": "2.0",
                        "id": 9,
                        "method": "eth_subscribe",
                        "params": ["newHeads"],
                    }
                    await ws.send(json.dumps(subscribe))  # subscriptions are calls too
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
                    return replies

            replies = asyncio.run(asyncio.wait_for(scenario(), 30))
            assert [r.get("result") for r in replies[:2]] == ["0x7a69", "0x7a69"]
            for refused, request_id in zip(replies[2:], (2, 9), strict=True):
                assert refused["id"] == request_id
                assert refused["error"]["code"] == -32005, refused  # type: ignore[index]
                assert "rate limit" in refused["error"]["message"]  # type: ignore[index]
    finally:
        for node in nodes:
            node.stop()
