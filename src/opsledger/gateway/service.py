"""The gateway as one object: upstreams, health, proxies, cache, limits, metrics, ledger.

``Gateway`` is what the HTTP server and the WebSocket hub call; it owns every long-lived
resource (the upstream HTTP connection pools, probe tasks, Redis clients) and releases them in
``stop``. ``handle_rpc(chain, payload)`` is the one entry point for JSON-RPC, used by
HTTP and by the WebSocket hub for non-subscription calls alike.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from opsledger.client.base import NullRecorder, Recorder
from opsledger.gateway.cache import Cache, MemoryCache, NoCache, RedisCache
from opsledger.gateway.config import GatewayConfig
from opsledger.gateway.health import ChainView, HealthMonitor
from opsledger.gateway.httpclient import HttpPool
from opsledger.gateway.jsonrpc import error_response
from opsledger.gateway.ledger import GatewayLedger
from opsledger.gateway.metrics import Metrics
from opsledger.gateway.proxy import ChainProxy
from opsledger.gateway.ratelimit import KeyBook, MemoryLimiter, RateLimiter, RedisLimiter
from opsledger.gateway.upstream import Breaker, Upstream

__all__ = ["Gateway", "UnknownChain"]

log = logging.getLogger(__name__)

_CIRCUIT = {Breaker.CLOSED: 0, Breaker.HALF_OPEN: 1, Breaker.OPEN: 2}


class UnknownChain(KeyError):
    pass


class Gateway:
    def __init__(self, config: GatewayConfig, recorder: Recorder | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.ledger = GatewayLedger(recorder or NullRecorder())
        self.cache: Cache = _make_cache(config)
        limiter: RateLimiter = (
            RedisLimiter(config.rate_limits.redis_url)
            if config.rate_limits.backend == "redis"
            else MemoryLimiter()
        )
        self.keys = KeyBook(config.rate_limits, limiter)
        self.proxies: dict[str, ChainProxy] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self.hubs: dict[str, Any] = {}
        for chain in config.chains:
            upstreams = [Upstream(u, config.health) for u in chain.upstreams]
            view = ChainView(chain)
            monitor = HealthMonitor(
                chain,
                upstreams,
                config.health,
                view,
                on_state=self._state_changed,
                on_reorg=self._reorg_handler(chain.name),
            )
            self.monitors[chain.name] = monitor
            self.proxies[chain.name] = ChainProxy(
                chain,
                config.limits,
                upstreams=upstreams,
                monitor=monitor,
                cache=self.cache,
                metrics=self.metrics,
            )
        self.ready = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for proxy in self.proxies.values():
            for upstream in proxy.upstreams:
                upstream.client = HttpPool(upstream.config.url)
        self.ledger.config_loaded(self.config)
        for name, monitor in self.monitors.items():
            await monitor.start()
            self._export(name)
        await self._start_hubs()
        self.ready = True

    async def _start_hubs(self) -> None:
        try:
            from opsledger.gateway.subscriptions import SubscriptionHub
        except ImportError:  # the WebSocket hub is optional: HTTP works without it
            return
        for chain in self.config.chains:
            urls = [u.ws_url or _derive_ws(u.url) for u in chain.upstreams]
            monitor = self.monitors[chain.name]
            hub = SubscriptionHub(
                chain.name,
                urls,
                on_new_head=self._head_handler(chain.name, monitor, urls),
                rpc_handler=self._bound(chain.name),
                max_batch=self.config.limits.max_batch,
            )
            await hub.start()
            self.hubs[chain.name] = hub
            self.proxies[chain.name].heads_pushed = _pushing(hub, monitor, urls)

    async def stop(self) -> None:
        self.ready = False
        for hub in self.hubs.values():
            await hub.stop()
        for monitor in self.monitors.values():
            await monitor.stop()
        for proxy in self.proxies.values():
            for upstream in proxy.upstreams:
                if upstream.client is not None:
                    await upstream.client.close()
        await self.cache.close()
        await self.keys.limiter.close()
        try:
            self.ledger.close()
        except Exception:  # the ledger being unreachable must not hide the shutdown
            log.exception("flushing gateway records failed")

    # ----------------------------------------------------------------- JSON-RPC

    def chain(self, name: str) -> ChainProxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise UnknownChain(name)
        return proxy

    async def handle_rpc(self, chain: str, payload: bytes) -> bytes:
        """JSON-RPC bytes in, bytes out, for one chain (the WebSocket hub calls this).

        Only notifications in ``payload``: ``b"null"`` (valid JSON, nothing to send)."""
        proxy = self.proxies.get(chain)
        if proxy is None:
            return error_response(None, -32601, f"unknown chain {chain}")
        reply = await proxy.handle_body(payload)
        return reply if reply is not None else b"null"

    def _head_handler(
        self, chain: str, monitor: HealthMonitor, urls: list[str]
    ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """``newHeads`` from the hub: reorg detection, and the head of the upstream the
        hub is connected to moves at once (no waiting for the next probe)."""
        by_url = dict(zip(urls, monitor.upstreams, strict=True))

        async def handler(header: dict[str, Any]) -> None:
            await monitor.note_new_head(header)
            hub = self.hubs.get(chain)
            upstream = by_url.get(getattr(hub, "current_url", None) or "")
            if upstream is not None:
                monitor.note_hub_head(upstream, header)

        return handler

    def _bound(self, chain: str) -> Callable[[bytes], Awaitable[bytes]]:
        async def handler(payload: bytes) -> bytes:
            return await self.handle_rpc(chain, payload)

        return handler

    # -------------------------------------------------------------------- events

    def _state_changed(self, chain: str, upstream: Upstream, state: str, reason: str) -> None:
        level = logging.INFO if state in ("healthy", "starting") else logging.WARNING
        log.log(level, "chain %s upstream %s: %s (%s)", chain, upstream.name, state, reason)
        self.ledger.upstream_state(chain, upstream.name, state, reason, upstream.head)
        self._export(chain)

    def _reorg_handler(self, chain: str) -> Callable[[int], Awaitable[None]]:
        async def handler(fork: int) -> None:
            self.metrics.reorgs.labels(chain).inc()
            config = self.config.chain(chain)
            view = self.monitors[chain].view
            genesis = (config.genesis_hash if config else None) or view.genesis
            if genesis:
                dropped = await self.cache.drop_from(genesis, fork)
                log.warning("chain %s: reorg at %d, %d cache entries dropped", chain, fork, dropped)

        return handler

    def _export(self, chain: str) -> None:
        monitor = self.monitors[chain]
        head = monitor.view.head
        self.metrics.chain_head.labels(chain).set(head)
        for upstream in monitor.upstreams:
            labels = (chain, upstream.name)
            self.metrics.head.labels(*labels).set(upstream.head)
            self.metrics.lag.labels(*labels).set(
                max(0, head - upstream.head) if upstream.head >= 0 else head + 1
            )
            self.metrics.up.labels(*labels).set(1 if upstream.in_rotation else 0)
            self.metrics.circuit.labels(*labels).set(_CIRCUIT[upstream.breaker])

    def export_all(self) -> None:
        for chain in self.monitors:
            self._export(chain)

    def status(self) -> dict[str, Any]:
        """The admin view: every chain's head and every upstream's state (no URLs' secrets:
        only scheme, host and port are shown)."""
        chains = []
        for name, monitor in self.monitors.items():
            view = monitor.view
            chain_config = self.config.chain(name)
            chains.append(
                {
                    "chain": name,
                    "head": view.head,
                    "finalized": view.finalized,
                    "genesis": (chain_config.genesis_hash if chain_config else None)
                    or view.genesis,
                    "reorgs": view.reorgs,
                    "upstreams": [
                        {
                            "name": u.name,
                            "url": _redact(u.config.url),
                            "state": u.state,
                            "in_rotation": u.in_rotation,
                            "reason": u.state_reason,
                            "head": u.head,
                            "lag": max(0, view.head - u.head) if u.head >= 0 else None,
                            "ewma_ms": round(u.ewma_ms, 3),
                            "p95_ms": round(u.p95_ms(), 3),
                            "outstanding": u.outstanding,
                            "peers": u.peers,
                            "circuit": u.breaker.value,
                            "tags": list(u.config.tags),
                            "priority": u.config.priority,
                        }
                        for u in monitor.upstreams
                    ],
                }
            )
        return {"ready": self.ready, "config_digest": self.config.digest(), "chains": chains}


def _pushing(hub: Any, monitor: HealthMonitor, urls: list[str]) -> Callable[[], bool]:
    by_url = dict(zip(urls, monitor.upstreams, strict=True))

    counters = getattr(hub, "counters", None)

    def live() -> bool:
        # Asked on every eth_blockNumber: read the hub's two counters, not ``stats()``
        # (which builds a dictionary and counts every subscription).
        stats = counters if counters is not None else hub.stats()
        if stats.get("connects", 0) <= stats.get("disconnects", 0):
            return False
        upstream = by_url.get(getattr(hub, "current_url", None) or "")
        return upstream is not None and upstream.in_rotation

    return live


def _make_cache(config: GatewayConfig) -> Cache:
    if config.cache.backend == "redis":
        return RedisCache(config.cache.redis_url, config.cache.ttl_s)
    if config.cache.backend == "none":
        return NoCache()
    return MemoryCache(config.cache.max_bytes)


def _derive_ws(url: str) -> str:
    """Without ``ws_url``, try the HTTP endpoint's WebSocket twin (anvil, reth, nethermind
    serve both on one port; geth users set ``ws_url``)."""
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    return "ws://" + url.removeprefix("http://")


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}" + (
        "/…" if parts.path not in ("", "/") else ""
    )
