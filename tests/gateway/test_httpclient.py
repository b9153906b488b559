"""The lean upstream HTTP client: real anvil, keep-alive reuse, the pool limit, and
servers that misbehave (cut mid-response, never answer, close-delimited, chunked)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
import pytest

from opsledger.gateway.config import HealthConfig, UpstreamConfig
from opsledger.gateway.httpclient import ConnectFailed, HttpPool, ResponseFailed
from opsledger.gateway.upstream import Upstream, UpstreamFailure
from opsledger.testing.anvil import free_port, running_anvil

CHAIN_ID = b'{"jsonrpc":"2.0","id":7,"method":"eth_chainId","params":[]}'

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _with_server(handler: Handler, scenario: Callable[[str], Awaitable[None]]) -> None:
    """Serve ``handler`` on a free port while ``scenario(url)`` runs; then wait (bounded)
    for every connection handler to finish, so none outlives the event loop."""
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await scenario(f"http://127.0.0.1:{port}/rpc")
    finally:
        server.close()
        await server.wait_closed()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2)
            assert not pending, "a server connection was left open"


@pytest.mark.anvil
def test_anvil_answers_and_connections_are_reused() -> None:
    async def scenario(url: str) -> None:
        pool = HttpPool(url)
        try:
            for _ in range(20):
                status, body = await pool.post(CHAIN_ID)
                assert status == 200
                assert orjson.loads(body) == {"jsonrpc": "2.0", "id": 7, "result": "0x7a69"}
            assert pool.connections_opened == 1  # keep-alive: one connection for all 20
            answers = await asyncio.gather(*(pool.post(CHAIN_ID) for _ in range(16)))
            assert {orjson.loads(b)["result"] for _, b in answers} == {"0x7a69"}
            assert pool.connections_opened <= 16
        finally:
            await pool.close()

    with running_anvil() as node:
        asyncio.run(scenario(node.url))


@pytest.mark.anvil
def test_pool_limit_bounds_open_connections() -> None:
    async def scenario(url: str) -> None:
        pool = HttpPool(url, limit=2)
        try:
            answers = await asyncio.gather(*(pool.post(CHAIN_ID) for _ in range(30)))
            assert [status for status, _ in answers] == [200] * 30
            assert pool.connections_opened == 2
        finally:
            await pool.close()

    with running_anvil() as node:
        asyncio.run(scenario(node.url))


def test_connection_refused_means_never_sent() -> None:
    async def scenario() -> None:
        pool = HttpPool(f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(ConnectFailed):
            await pool.post(CHAIN_ID)
        upstream = Upstream(UpstreamConfig(name="gone", url="http://x"), HealthConfig())
        upstream.client = pool
        with pytest.raises(UpstreamFailure) as failure:
            await upstream.post(CHAIN_ID, 1.0)
        assert failure.value.sent is False
        assert upstream.outstanding == 0

    asyncio.run(scenario())


def test_cut_mid_response_fails_and_next_request_uses_a_new_connection() -> None:
    calls = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            calls += 1
            if calls == 1:
                # Promise 100 bytes, send 10, hang up.
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                await writer.drain()
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        await _close(writer)

    async def scenario(url: str) -> None:
        pool = HttpPool(url)
        with pytest.raises(ResponseFailed):
            await pool.post(CHAIN_ID)
        assert await pool.post(CHAIN_ID) == (200, b"ok")
        assert pool.connections_opened == 2
        upstream = Upstream(UpstreamConfig(name="n", url=url), HealthConfig())
        upstream.client = pool
        assert await upstream.post(CHAIN_ID, 1.0) == b"ok"
        await pool.close()

    asyncio.run(_with_server(handler, scenario))


def test_timeout_closes_the_connection_so_a_late_answer_is_never_misread() -> None:
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            requests.append(request)
            if len(requests) == 1:
                await asyncio.sleep(0.3)  # answers the first request too late
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            try:
                await writer.drain()
            except ConnectionError:
                break
        await _close(writer)

    async def scenario(url: str) -> None:
        upstream = Upstream(UpstreamConfig(name="slow", url=url), HealthConfig())
        upstream.client = pool = HttpPool(url)
        with pytest.raises(UpstreamFailure) as failure:
            await upstream.post(CHAIN_ID, 0.1)
        assert "timed out" in failure.value.reason
        assert failure.value.sent is True
        await asyncio.sleep(0.4)
        assert await upstream.post(CHAIN_ID, 1.0) == b"fresh"
        assert pool.connections_opened == 2
        await pool.close()

    asyncio.run(_with_server(handler, scenario))


def test_close_delimited_chunked_and_error_statuses() -> None:
    replies = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            try:
                request = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            assert request.startswith(b"POST /rpc HTTP/1.1\r\n")
            assert request.endswith(CHAIN_ID)
            reply = replies.pop(0)
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply:
                break
        await _close(writer)

    async def scenario(url: str) -> None:
        pool = HttpPool(url)
        assert await pool.post(CHAIN_ID) == (200, b"x" * 5000)
        assert await pool.post(CHAIN_ID) == (200, b"abcde")  # a fresh connection
        upstream = Upstream(UpstreamConfig(name="n", url=url), HealthConfig())
        upstream.client = pool
        with pytest.raises(UpstreamFailure, match="HTTP 503"):
            await upstream.post(CHAIN_ID, 1.0)
        assert await upstream.post(CHAIN_ID, 1.0) == b"{}"  # a JSON-RPC error body
        assert await pool.post(CHAIN_ID) == (200, b"ok")
        assert pool.connections_opened == 2
        await pool.close()

    asyncio.run(_with_server(handler, scenario))


def test_request_head_carries_host_and_basic_auth() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await _close(writer)

    async def scenario(url: str) -> None:
        authed = url.replace("http://", "http://user:p%40ss@") + "/key?x=1"
        pool = HttpPool(authed)
        assert await pool.post(b"{}") == (200, b"ok")
        await pool.close()

    asyncio.run(_with_server(handler, scenario))
    head = seen[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /rpc/key?x=1 HTTP/1.1"
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in head)
    assert b"Authorization: Basic dXNlcjpwQHNz" in head  # user:p@ss
    assert b"Content-Length: 2" in head
    with pytest.raises(ValueError, match="scheme"):
        HttpPool("ftp://127.0.0.1/")


def test_waiting_for_a_free_connection_counts_against_the_timeout() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            await _read_request(reader)
            await release.wait()  # holds the only connection
        await _close(writer)

    async def scenario(url: str) -> None:
        pool = HttpPool(url, limit=1)
        first = asyncio.ensure_future(pool.post(CHAIN_ID, 5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await pool.post(CHAIN_ID, 0.1)  # never got a connection
        assert pool.connections_opened == 1
        release.set()
        with pytest.raises(ResponseFailed):
            await first  # the server hung up without answering
        await pool.close()

    asyncio.run(_with_server(handler, scenario))
