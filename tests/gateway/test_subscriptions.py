"""The WebSocket subscription hub against real anvil nodes.

The hub is served here by a bare ``websockets`` server (the same ``serve`` entry point the
gateway's HTTP server mounts), so these tests hold whatever web stack the gateway uses.
Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from opsledger.gateway.subscriptions import SubscriptionHub, subscription_key
from opsledger.testing.anvil import Anvil

T = TypeVar("T")
WAIT = 15.0
SENDER = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"  # anvil's first default account
TOPIC = "0x" + "ab" * 32


def run(scenario: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())


@pytest.fixture
def anvils() -> Iterator[list[Anvil]]:
    nodes = [Anvil.start(), Anvil.start()]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.asynccontextmanager
async def hub_server(hub: SubscriptionHub) -> AsyncIterator[str]:
    """Start ``hub`` behind a websockets server on 127.0.0.1; yields the client URL."""
    await hub.start()

    async def handler(conn: ServerConnection) -> None:
        await hub.serve(conn)

    try:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            assert await hub.wait_connected(WAIT), "hub never reached its upstream"
            yield f"ws://127.0.0.1:{port}"
    finally:
        await hub.stop()


class Client:
    """A JSON-RPC WebSocket client that keeps notifications apart from replies."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.ids = iter(range(1, 10**9))
        self.notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.conn:
                message = json.loads(raw)
                if isinstance(message, dict) and message.get("method") == "eth_subscription":
                    self.notes.put_nowait(message["params"])
                elif isinstance(message, dict) and message.get("id") in self.replies:
                    self.replies.pop(message["id"]).set_result(message)
                else:
                    self.replies.pop(None, asyncio.Future()).set_result(message)

    async def call(self, method: str, params: list[Any] | None = None) -> dict[str, Any]:
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or []}
        await self.conn.send(json.dumps(body))
        return await asyncio.wait_for(future, WAIT)

    async def raw(self, text: str) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[None] = future
        await self.conn.send(text)
        return await asyncio.wait_for(future, WAIT)

    async def subscribe(self, *params: Any) -> str:
        reply = await self.call("eth_subscribe", list(params))
        assert "result" in reply, reply
        return str(reply["result"])

    async def next_note(self, timeout: float = WAIT) -> dict[str, Any]:
        return await asyncio.wait_for(self.notes.get(), timeout)

    async def close(self) -> None:
        await self.conn.close()
        self.reader.cancel()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    async with connect(url) as conn:
        c = Client(conn)
        try:
            yield c
        finally:
            c.reader.cancel()


async def heads_until(c: Client, number: int, sub_id: str) -> list[int]:
    """Numbers of the heads received until ``number`` arrives (all under ``sub_id``)."""
    seen: list[int] = []
    while not seen or seen[-1] < number:
        note = await c.next_note()
        assert note["subscription"] == sub_id
        seen.append(int(note["result"]["number"], 16))
    return seen


def deploy_logger(node: Anvil) -> str:
    """A contract whose every call emits one LOG1 with ``TOPIC`` (hand-assembled EVM)."""
    runtime = "7f" + TOPIC[2:] + "60006000a100"  # PUSH32 topic, PUSH1 0, PUSH1 0, LOG1, STOP
    size = len(runtime) // 2
    init = f"60{size:02x}600c60003960{size:02x}6000f3"  # CODECOPY runtime, RETURN it
    tx = node.rpc("eth_sendTransaction", [{"from": SENDER, "data": "0x" + init + runtime}])
    return str(receipt(node, tx)["contractAddress"])


def receipt(node: Anvil, tx: str) -> dict[str, Any]:
    for _ in range(200):
        found = node.rpc("eth_getTransactionReceipt", [tx])
        if found is not None:
            assert found["status"] == "0x1", found
            return dict(found)
        time.sleep(0.02)
    raise AssertionError(f"no receipt for {tx}")


def poke(node: Anvil, address: str) -> None:
    node.rpc("eth_sendTransaction", [{"from": SENDER, "to": address}])


def test_subscription_key_normalises_equivalent_log_filters() -> None:
    address = "0x" + "Ab" * 20
    one = subscription_key("logs", [{"address": address, "topics": [TOPIC, None]}])
    other = subscription_key("logs", [{"address": [address.lower()], "topics": [[TOPIC]]}])
    assert one[:2] == other[:2]
    assert one[2] == ["logs", {"address": [address.lower()], "topics": [[TOPIC]]}]
    assert subscription_key("newHeads", []) == ("newHeads", "", ["newHeads"])
    assert subscription_key("logs", [{"address": address}])[1] != one[1]


@pytest.mark.anvil
@pytest.mark.slow
def test_new_heads_keep_flowing_across_an_upstream_restart(anvils: list[Anvil]) -> None:
    node = anvils[0]
    hub = SubscriptionHub("local", [node.ws_url], ping_interval=0.5, ping_timeout=1.0)

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as c:
            sub_id = await c.subscribe("newHeads")
            node.mine(3)
            assert await heads_until(c, 3, sub_id) == [1, 2, 3]
            await asyncio.to_thread(node.restart)  # same port, fresh chain at block 0
            for _ in range(100):
                if hub.counters["connects"] >= 2 and hub.stats()["upstream_subscriptions"]:
                    break
                await asyncio.sleep(0.1)
            assert hub.counters["connects"] >= 2, "the hub did not reconnect"
            node.mine(5)
            # 1 and 2 again are below the head: dropped. 3 is delivered again only when its
            # hash differs (a reorg of the head, as far as a client can tell; anvil's empty
            # blocks can come out identical when mined in the same second).
            assert await heads_until(c, 5, sub_id) in ([3, 4, 5], [4, 5])
            assert (await c.call("eth_blockNumber"))["result"] == "0x5"

    run(scenario)


@pytest.mark.anvil
@pytest.mark.slow
def test_failover_to_another_node_backfills_missed_heads(anvils: list[Anvil]) -> None:
    first, second = anvils
    seen_by_gateway: list[int] = []
    hub = SubscriptionHub(
        "local",
        [first.ws_url, second.ws_url],
        on_new_head=lambda head: seen_by_gateway.append(int(head["number"], 16)),
        ping_interval=0.5,
        ping_timeout=1.0,
    )

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as c:
            sub_id = await c.subscribe("newHeads")
            first.mine(2)
            assert await heads_until(c, 2, sub_id) == [1, 2]
            second.mine(4)  # the other node is ahead: heads 3 and 4 were never announced
            await asyncio.to_thread(first.kill)
            for _ in range(100):
                if hub.current_url == second.ws_url and hub.stats()["connected"]:
                    break
                await asyncio.sleep(0.1)
            assert hub.current_url == second.ws_url
            second.mine(1)
            assert await heads_until(c, 5, sub_id) == [3, 4, 5]
            assert seen_by_gateway == [1, 2, 3, 4, 5]
            assert hub.stats()["upstream_subscriptions"] == 1  # the hub's own is shared

    run(scenario)


@pytest.mark.anvil
@pytest.mark.slow
def test_a_hung_upstream_is_left_after_the_ping_timeout(anvils: list[Anvil]) -> None:
    first, second = anvils
    hub = SubscriptionHub(
        "local", [first.ws_url, second.ws_url], ping_interval=0.3, ping_timeout=0.7
    )

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as c:
            sub_id = await c.subscribe("newHeads")
            first.pause()
            try:
                for _ in range(150):
                    if hub.current_url == second.ws_url and hub.stats()["connected"]:
                        break
                    await asyncio.sleep(0.1)
                assert hub.current_url == second.ws_url, "still waiting on the hung node"
                second.mine(1)
                assert await heads_until(c, 1, sub_id) == [1]
            finally:
                first.resume()

    run(scenario)


@pytest.mark.anvil
def test_many_clients_share_one_upstream_subscription(anvils: list[Anvil]) -> None:
    node = anvils[0]
    hub = SubscriptionHub("local", [node.ws_url])

    async def scenario() -> None:
        async with hub_server(hub) as url, contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client(url)) for _ in range(20)]
            ids = await asyncio.gather(*(c.subscribe("newHeads") for c in clients))
            assert len(set(ids)) == 20
            assert hub.stats()["upstream_subscriptions"] == 1
            assert hub.stats()["client_subscriptions"] == 20
            node.mine(2)
            for c, sub_id in zip(clients, ids, strict=True):
                assert await heads_until(c, 2, sub_id) == [1, 2]
            assert hub.counters["notifications_in"] == 2  # one upstream message per head

    run(scenario)


@pytest.mark.anvil
def test_logs_subscriptions_filter_and_share(anvils: list[Anvil]) -> None:
    node = anvils[0]
    emitter, other = deploy_logger(node), deploy_logger(node)
    hub = SubscriptionHub("local", [node.ws_url])

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as a, client(url) as b, client(url) as o:
            sub_a = await a.subscribe("logs", {"address": emitter, "topics": [TOPIC]})
            sub_b = await b.subscribe("logs", {"address": [emitter.upper().replace("0X", "0x")]})
            sub_o = await o.subscribe("logs", {"address": other})
            assert hub.stats()["upstream_subscriptions"] == 3
            await asyncio.to_thread(poke, node, emitter)
            for c, sub_id in ((a, sub_a), (b, sub_b)):
                note = await c.next_note()
                assert note["subscription"] == sub_id
                assert note["result"]["address"].lower() == emitter.lower()
                assert note["result"]["topics"] == [TOPIC]
            await asyncio.to_thread(poke, node, other)
            note = await o.next_note()
            assert note["subscription"] == sub_o
            assert note["result"]["address"].lower() == other.lower()
            assert a.notes.empty()
            assert b.notes.empty()

    run(scenario)


@pytest.mark.anvil
def test_unsubscribe_stops_delivery_and_releases_the_upstream(anvils: list[Anvil]) -> None:
    node = anvils[0]
    hub = SubscriptionHub("local", [node.ws_url])

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as a, client(url) as b:
            sub_a = await a.subscribe("newHeads")
            sub_b = await b.subscribe("newHeads")
            assert (await a.call("eth_unsubscribe", [sub_a]))["result"] is True
            assert (await a.call("eth_unsubscribe", [sub_a]))["result"] is False
            assert (await a.call("eth_unsubscribe", [sub_b]))["result"] is False  # not a's
            assert hub.stats()["upstream_subscriptions"] == 1
            node.mine(1)
            assert await heads_until(b, 1, sub_b) == [1]
            assert (await b.call("eth_unsubscribe", [sub_b]))["result"] is True
            assert hub.stats()["upstream_subscriptions"] == 0
            node.mine(1)
            await b.call("eth_blockNumber")  # a round trip after the head
            assert a.notes.empty()
            assert b.notes.empty()

    run(scenario)


@pytest.mark.anvil
def test_other_calls_and_bad_input_on_the_socket(anvils: list[Anvil]) -> None:
    node = anvils[0]
    hub = SubscriptionHub("local", [node.ws_url], max_client_subscriptions=2)

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as c:
            assert (await c.call("eth_chainId"))["result"] == hex(node.chain_id)
            first = await c.subscribe("newHeads")
            await c.subscribe("logs", {})
            reply = await c.call("eth_subscribe", ["newHeads"])
            assert reply["error"]["code"] == -32005, reply  # the per-socket limit
            assert (await c.call("eth_unsubscribe", [first]))["result"] is True
            reply = await c.call("eth_subscribe", ["syncingWhatever"])
            assert reply["error"]["code"] == -32602
            reply = await c.call("eth_subscribe", ["logs", {"fromBlock": "0x0"}])
            assert reply["error"]["code"] == -32602
            reply = await c.raw("{not json")
            assert reply["error"]["code"] == -32700
            batch = json.dumps(
                [
                    {"jsonrpc": "2.0", "id": 7, "method": "eth_blockNumber", "params": []},
                    {"jsonrpc": "2.0", "id": 8, "method": "eth_subscribe", "params": ["newHeads"]},
                ]
            )
            replies: Any = await c.raw(batch)
            assert [r["id"] for r in replies] == [7, 8]
            assert replies[0]["result"] == "0x0"
            assert replies[1]["result"].startswith("0x")

    run(scenario)


@pytest.mark.anvil
def test_calls_go_through_the_gateway_handler_when_given(anvils: list[Anvil]) -> None:
    node = anvils[0]
    seen: list[bytes] = []

    async def handler(payload: bytes) -> bytes:
        seen.append(payload)
        request = json.loads(payload)
        return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x2a"}).encode()

    hub = SubscriptionHub("local", [node.ws_url], rpc_handler=handler)

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as c:
            assert (await c.call("eth_blockNumber"))["result"] == "0x2a"
            assert json.loads(seen[0])["method"] == "eth_blockNumber"

    run(scenario)


@pytest.mark.anvil
def test_logs_missed_during_failover_are_backfilled_once(anvils: list[Anvil]) -> None:
    first, second = anvils
    emitter = deploy_logger(first)
    second.mine(1)  # so no block of the two chains is identical (anvil is deterministic)
    assert deploy_logger(second) == emitter  # same sender and nonce: same address
    hub = SubscriptionHub("local", [first.ws_url, second.ws_url])

    async def scenario() -> None:
        async with hub_server(hub) as url, client(url) as c:
            sub_id = await c.subscribe("logs", {"address": emitter})
            await asyncio.to_thread(poke, first, emitter)
            blocks = [int((await c.next_note())["result"]["blockNumber"], 16)]
            # Logs the hub never heard about: emitted on the other node before failover.
            await asyncio.to_thread(poke, second, emitter)
            await asyncio.to_thread(poke, second, emitter)
            await asyncio.to_thread(first.kill)
            for _ in range(3):
                note = await c.next_note()
                assert note["subscription"] == sub_id
                blocks.append(int(note["result"]["blockNumber"], 16))
                if len(blocks) == 3:
                    await asyncio.to_thread(poke, second, emitter)  # a live one after
            assert blocks == [2, 3, 4, 5]
            await c.call("eth_blockNumber")
            assert c.notes.empty(), "a log was delivered twice"

    run(scenario)
