"""The JSON-RPC client against a real local HTTP server: retries on 5xx, no retry on a
4xx that is not JSON, batches, keep-alive, credentials from the URL, unreachable nodes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from opsledger.indexer.rpc import RpcClient, RpcError, RpcTransportError
from opsledger.testing.anvil import free_port


class Node(ThreadingHTTPServer):
    """Answers JSON-RPC with ``result = method``; ``script`` holds statuses to answer first."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, bytes]] = []
        self.seen: list[dict[str, Any]] = []  # path, auth header, client port, body
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a node's server does
    server: Node

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.seen.append(
                {
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "port": self.client_address[1],
                    "body": body,
                }
            )
            scripted = self.server.script.pop(0) if self.server.script else None
        if scripted is not None:
            status, raw = scripted
        else:
            status = 200
            calls = body if isinstance(body, list) else [body]
            replies = [{"jsonrpc": "2.0", "id": c["id"], "result": c["method"]} for c in calls]
            raw = json.dumps(replies if isinstance(body, list) else replies[0]).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def node() -> Iterator[Node]:
    server = Node()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_retries_a_5xx_then_answers(node: Node) -> None:
    node.script = [(503, b"busy")]

    async def run() -> tuple[Any, RpcClient]:
        async with RpcClient(node.url, backoff=0.01) as rpc:
            return await rpc.call("eth_chainId"), rpc

    result, rpc = asyncio.run(run())
    assert result == "eth_chainId"
    assert (rpc.stats.requests, rpc.stats.calls, rpc.stats.errors) == (2, 1, 1)


def test_a_4xx_that_is_not_json_is_an_rpc_error_not_retried(node: Node) -> None:
    node.script = [(413, b"request entity too large")]

    async def run() -> RpcClient:
        async with RpcClient(node.url, backoff=0.01) as rpc:
            with pytest.raises(RpcError, match="HTTP 413"):
                await rpc.call("eth_getLogs", [{}])
            return rpc

    rpc = asyncio.run(run())
    assert rpc.stats.requests == 1 and len(node.seen) == 1


def test_batches_keep_alive_and_url_credentials(node: Node) -> None:
    url = node.url.replace("http://", "http://user:s%40cret@") + "/v1/key?x=1"

    async def run() -> tuple[list[Any], list[Any]]:
        async with RpcClient(url, max_connections=1) as rpc:
            first = await rpc.batch([("eth_blockNumber", []), ("eth_chainId", [])])
            second = await rpc.batch([("net_version", []), ("eth_gasPrice", [])])
            return first, second

    first, second = asyncio.run(run())
    assert first == ["eth_blockNumber", "eth_chainId"]
    assert second == ["net_version", "eth_gasPrice"]
    assert {s["path"] for s in node.seen} == {"/v1/key?x=1"}
    assert {s["auth"] for s in node.seen} == {"Basic " + base64.b64encode(b"user:s@cret").decode()}
    assert len({s["port"] for s in node.seen}) == 1  # one connection, kept alive


def test_an_unreachable_node_is_a_transport_error() -> None:
    async def run() -> RpcClient:
        async with RpcClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01) as rpc:
            with pytest.raises(RpcTransportError, match="after 2 attempts"):
                await rpc.block_number()
            return rpc

    rpc = asyncio.run(run())
    assert rpc.stats.errors == 2


def test_a_url_that_is_not_http_is_refused() -> None:
    async def run() -> None:
        async with RpcClient("ws://127.0.0.1:1") as rpc:
            await rpc.block_number()

    with pytest.raises(RpcTransportError, match="not an http"):
        asyncio.run(run())
