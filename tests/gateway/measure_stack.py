"""Measure the candidate stacks for the gateway (not a test; run by hand).

    .venv/bin/python tests/gateway/measure_stack.py

Server side: the same minimal JSON-RPC echo on Starlette+uvicorn (h11 vs httptools,
asyncio vs uvloop) and on aiohttp.web. Client side: aiohttp vs httpx POSTing
``eth_blockNumber`` to one anvil. Each run: 32 concurrent connections for 3 s from one
separate load-generator process (aiohttp), requests answered per second and p50.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import orjson

from opsledger.testing.anvil import Anvil, free_port

BODY = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
REPLY = b'{"jsonrpc":"2.0","id":1,"result":"0x0"}'
SECONDS = 3.0
CONNECTIONS = 32


async def _load(url: str) -> tuple[float, float]:
    latencies: list[float] = []
    stop = time.monotonic() + SECONDS
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                async with session.post(url, data=BODY) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return len(latencies) / SECONDS, statistics.median(latencies) * 1000


def _serve_starlette(port: int, http: str, loop: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def rpc(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(REPLY, media_type="application/json")

    app = Starlette(routes=[Route("/", rpc, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, loop=loop, log_level="error")


def _serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def rpc(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", rpc)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def _measure_server(name: str, target: Callable[..., None], *args: Any) -> None:
    port = free_port()
    process = multiprocessing.Process(target=target, args=(port, *args), daemon=True)
    process.start()
    time.sleep(1.5)
    rps, p50 = asyncio.run(_load(f"http://127.0.0.1:{port}/"))
    process.terminate()
    process.join()
    print(f"server {name:34} {rps:8.0f} req/s  p50 {p50:6.2f} ms")


async def _client(kind: str, url: str) -> tuple[float, float]:
    latencies: list[float] = []
    stop = time.monotonic() + SECONDS
    if kind == "aiohttp":
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as s:

            async def worker() -> None:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    async with s.post(url, data=BODY) as response:
                        await response.read()
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    else:
        limits = httpx.Limits(max_connections=CONNECTIONS)
        async with httpx.AsyncClient(limits=limits) as client:

            async def worker() -> None:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    await client.post(url, content=BODY)
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return len(latencies) / SECONDS, statistics.median(latencies) * 1000


def main() -> None:
    _measure_server("starlette + uvicorn (h11, asyncio)", _serve_starlette, "h11", "asyncio")
    _measure_server(
        "starlette + uvicorn (httptools, uvloop)", _serve_starlette, "httptools", "uvloop"
    )
    _measure_server("aiohttp.web", _serve_aiohttp)
    node = Anvil.start()
    try:
        for kind in ("aiohttp", "httpx"):
            rps, p50 = asyncio.run(_client(kind, node.url))
            print(f"client {kind:34} {rps:8.0f} req/s  p50 {p50:6.2f} ms (to anvil)")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
