"""The weighted HTTP switch of the ``process`` target: a small reverse proxy on 127.0.0.1.

It is what makes blue-green and canary real on one machine: traffic reaches the service
only through the switch, which splits it between pools (``blue``/``green``, or
``stable``/``canary``) by weight, and measures what each pool answered (status and latency)
so a metric gate can judge the new version on the traffic it actually served.

Written by hand on aiohttp because no maintained library is a *programmable* weighted proxy
that also reports per-pool error rate and p95 over a sliding window; it stays small:

- Pool choice is smooth weighted round-robin (nginx's algorithm): deterministic, so 5% of
  100 requests is exactly 5, and a test can count. Within a pool, plain round-robin.
- An upstream that cannot be reached answers 502 and counts as an error for its pool.
- Admin endpoints live under ``/_switch/`` and need the token from the state directory
  (``X-Switch-Token``): ``GET|PUT /_switch/routes`` and ``GET /_switch/stats?pool=P&seconds=W``.
- Routes are also read from ``--routes FILE`` at start, so a restarted switch resumes
  the last routing the deployer persisted.

Run as ``python -m opsledger.pipeline.deploy.switch --listen 127.0.0.1:PORT --routes FILE
--token-file FILE``; the deployer starts it detached and finds it again from its state.
"""

from __future__ import annotations

import argparse
import collections
import hmac
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from opsledger.core import UpstreamError

__all__ = ["PoolStats", "Router", "SwitchAdmin", "build_app", "main", "percentile"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_SAMPLES = 200_000  # newest requests kept for the stats window


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the q-th of sorted values); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class PoolStats:
    pool: str
    requests: int
    errors: int
    p95_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class _Pool:
    weight: int
    upstreams: list[str]
    current: int = 0  # smooth weighted round-robin state
    next_upstream: int = 0


@dataclass
class Router:
    """Routes and measurements; pure state, driven by the aiohttp handlers."""

    pools: dict[str, _Pool] = field(default_factory=dict)
    samples: collections.deque[tuple[float, str, int, float]] = field(
        default_factory=lambda: collections.deque(maxlen=_SAMPLES)
    )

    def set_routes(self, routes: Mapping[str, Any]) -> None:
        pools: dict[str, _Pool] = {}
        for name, spec in (routes.get("pools") or {}).items():
            weight = int(spec.get("weight", 0))
            upstreams = [str(u) for u in spec.get("upstreams", [])]
            if weight < 0 or (weight > 0 and not upstreams):
                raise ValueError(f"pool {name}: a weighted pool needs upstreams")
            pools[str(name)] = _Pool(weight=weight, upstreams=upstreams)
        self.pools = pools

    def routes(self) -> dict[str, Any]:
        return {
            "pools": {
                n: {"weight": p.weight, "upstreams": list(p.upstreams)}
                for n, p in self.pools.items()
            }
        }

    def pick(self) -> tuple[str, str] | None:
        """The next (pool, upstream), or None when no pool has weight."""
        live = [(n, p) for n, p in self.pools.items() if p.weight > 0 and p.upstreams]
        if not live:
            return None
        total = sum(p.weight for _, p in live)
        for _, p in live:
            p.current += p.weight
        name, best = max(live, key=lambda item: item[1].current)
        best.current -= total
        upstream = best.upstreams[best.next_upstream % len(best.upstreams)]
        best.next_upstream += 1
        return name, upstream

    def observe(self, pool: str, status: int, latency_ms: float) -> None:
        self.samples.append((time.monotonic(), pool, status, latency_ms))

    def stats(self, pool: str, seconds: float) -> PoolStats:
        since = time.monotonic() - seconds
        chosen = [(s, lat) for t, p, s, lat in self.samples if t >= since and p == pool]
        return PoolStats(
            pool=pool,
            requests=len(chosen),
            errors=sum(1 for s, _ in chosen if s >= 500),
            p95_ms=round(percentile([lat for _, lat in chosen], 95), 3),
        )


def build_app(router: Router, token: str, routes_file: Path | None = None) -> web.Application:
    """The aiohttp application: admin endpoints under /_switch/, everything else proxied."""
    app = web.Application()
    session_key = web.AppKey("session", ClientSession)

    async def open_session(app: web.Application) -> Any:
        app[session_key] = ClientSession(timeout=ClientTimeout(total=30), auto_decompress=False)
        yield
        await app[session_key].close()

    app.cleanup_ctx.append(open_session)

    def authorised(request: web.Request) -> bool:
        given = request.headers.get("X-Switch-Token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    async def admin(request: web.Request) -> web.StreamResponse:
        if not authorised(request):
            return web.json_response({"error": "bad or missing X-Switch-Token"}, status=401)
        what = request.match_info["what"]
        if what == "routes" and request.method == "GET":
            return web.json_response(router.routes())
        if what == "routes" and request.method == "PUT":
            try:
                router.set_routes(await request.json())
            except (ValueError, TypeError, AttributeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            if routes_file is not None:
                routes_file.write_text(json.dumps(router.routes()))
            return web.json_response(router.routes())
        if what == "stats" and request.method == "GET":
            try:
                seconds = float(request.query.get("seconds", "60"))
            except ValueError:
                return web.json_response({"error": "seconds must be a number"}, status=400)
            s = router.stats(request.query.get("pool", ""), seconds)
            return web.json_response(
                {
                    "pool": s.pool,
                    "requests": s.requests,
                    "errors": s.errors,
                    "error_rate": s.error_rate,
                    "p95_ms": s.p95_ms,
                }
            )
        return web.json_response({"error": "not found"}, status=404)

    async def proxy(request: web.Request) -> web.StreamResponse:
        choice = router.pick()
        if choice is None:
            return web.Response(status=503, text="no route\n")
        pool, upstream = choice
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        started = time.perf_counter()
        try:
            async with app[session_key].request(
                request.method,
                f"http://{upstream}{request.rel_url}",
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as upstream_response:
                body = await upstream_response.read()
                status = upstream_response.status
                out_headers = {
                    k: v
                    for k, v in upstream_response.headers.items()
                    if k.lower() not in _HOP_BY_HOP
                }
        except (TimeoutError, ClientError, OSError) as exc:
            router.observe(pool, 502, (time.perf_counter() - started) * 1000)
            return web.Response(status=502, text=f"upstream {upstream} failed: {exc}\n")
        router.observe(pool, status, (time.perf_counter() - started) * 1000)
        out_headers["X-Switch-Pool"] = pool
        return web.Response(status=status, body=body, headers=out_headers)

    app.router.add_route("*", "/_switch/{what}", admin)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


class SwitchAdmin:
    """The deployer's side: set routes and read stats over the admin endpoints."""

    def __init__(self, url: str, token: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"X-Switch-Token": token}
        self._timeout = timeout

    def _call(self, method: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = httpx.request(
                method,
                f"{self.url}/_switch/{what}",
                headers=self._headers,
                timeout=self._timeout,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(f"switch at {self.url} did not answer: {exc}") from exc
        if response.status_code != 200:
            raise UpstreamError(f"switch at {self.url}: {what} {response.text.strip()}")
        data: dict[str, Any] = response.json()
        return data

    def alive(self) -> bool:
        try:
            self._call("GET", "routes")
        except UpstreamError:
            return False
        return True

    def set_routes(self, routes: Mapping[str, Any]) -> None:
        self._call("PUT", "routes", json=dict(routes))

    def routes(self) -> dict[str, Any]:
        return self._call("GET", "routes")

    def stats(self, pool: str, seconds: float) -> PoolStats:
        data = self._call("GET", "stats", params={"pool": pool, "seconds": seconds})
        return PoolStats(
            pool=pool,
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            p95_ms=float(data["p95_ms"]),
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="opsledger-switch", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--routes", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    args = parser.parse_args(argv)
    router = Router()
    if args.routes.exists():
        router.set_routes(json.loads(args.routes.read_text() or "{}"))
    token = args.token_file.read_text().strip()
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        build_app(router, token, args.routes),
        host=host,
        port=int(port),
        print=None,
        access_log=None,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
