"""A counting JSON-RPC proxy in front of anvil, so every indexer's RPC use is measured
the same way, whatever its own metrics say.

Each indexer under test gets the proxy's URL instead of the node's. The proxy forwards
every HTTP POST body unchanged and counts HTTP requests, JSON-RPC calls (a batch of 50
is one request and 50 calls) and calls per method. It runs on its own event loop in a
thread, on 127.0.0.1, and adds the same small latency to every indexer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from opsledger.testing.anvil import free_port


@dataclass
class Counts:
    requests: int = 0
    calls: int = 0
    methods: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> Counts:
        return Counts(self.requests, self.calls, Counter(self.methods))

    def since(self, before: Counts) -> Counts:
        return Counts(
            self.requests - before.requests,
            self.calls - before.calls,
            self.methods - before.methods,
        )


class RpcProxy:
    """``with RpcProxy(upstream) as proxy: proxy.url``; ``proxy.counts`` grows live."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.counts = Counts()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="rpc-proxy", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def retarget(self, upstream: str) -> None:
        """Point at another node (a restarted anvil) without changing the proxy's URL."""
        self.upstream = upstream

    def reset(self) -> Counts:
        before = self.counts
        self.counts = Counts()
        return before

    def __enter__(self) -> RpcProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the RPC proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def forward(request: web.Request) -> web.Response:
                body = await request.read()
                self._count(body)
                async with session.post(
                    self.upstream, data=body, headers={"Content-Type": "application/json"}
                ) as upstream:
                    payload = await upstream.read()
                    return web.Response(
                        body=payload, status=upstream.status, content_type="application/json"
                    )

            app = web.Application(client_max_size=256 * 1024 * 1024)
            app.router.add_post("/{tail:.*}", forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    def _count(self, body: bytes) -> None:
        self.counts.requests += 1
        try:
            data: Any = json.loads(body)
        except ValueError:
            return
        items = data if isinstance(data, list) else [data]
        for item in items:
            if isinstance(item, dict):
                self.counts.calls += 1
                self.counts.methods[str(item.get("method"))] += 1
