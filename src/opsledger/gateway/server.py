"""The HTTP/WebSocket front: a bare ASGI JSON-RPC endpoint in front of Starlette routes,
on uvicorn (see docs/gateway.md and docs/gateway-benchmark.md for why).

Routes: ``POST /rpc/{chain}`` and ``/rpc/{chain}/{api_key}`` (JSON-RPC over HTTP), the
same paths as WebSocket upgrades (``eth_subscribe`` through the subscription hub),
``/healthz`` (the process answers), ``/readyz`` (every chain has an upstream in
rotation), ``/metrics`` (Prometheus) and ``/admin/upstreams`` (bearer-token protected).

Every error a client can cause is a JSON-RPC error object, never a traceback: bad JSON
is -32700, an oversized body 413 with -32600, a refused rate 429 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from opsledger.gateway.jsonrpc import INVALID_REQUEST, RpcErrorReply, parse_payload
from opsledger.gateway.service import Gateway

__all__ = ["build_app", "serve", "uvicorn_config"]

_JSON = "application/json"


def _error_body(code: int, message: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}})


def _cost(payload: Any, costs: dict[str, float]) -> float:
    items = payload if isinstance(payload, list) else [payload]
    total = 0.0
    for item in items:
        method = item.get("method") if isinstance(item, dict) else None
        total += costs.get(method, 1.0) if isinstance(method, str) else 1.0
    return max(total, 1.0)


# One answer of the JSON-RPC endpoint: status, body (None: empty), extra headers.
Answer = tuple[int, bytes | None, list[tuple[bytes, bytes]]]
_NO_HEADERS: list[tuple[bytes, bytes]] = []


def _rpc_answerer(
    gateway: Gateway,
) -> Callable[[str, str | None, str, bytes | None], Awaitable[Answer]]:
    """What ``POST /rpc/{chain}[/{api_key}]`` answers, independent of the HTTP layer
    (``body`` None: larger than the limit)."""
    config = gateway.config
    costs = dict(config.rate_limits.method_costs)
    limit = config.limits.max_body_bytes

    async def answer(chain: str, api_key: str | None, client_ip: str, body: bytes | None) -> Answer:
        proxy = gateway.proxies.get(chain)
        if proxy is None:
            return 404, _error_body(-32601, f"unknown chain {chain!r}"), _NO_HEADERS
        if body is None:
            return 413, _error_body(INVALID_REQUEST, f"request body exceeds {limit} bytes"), []
        try:
            payload = parse_payload(body)
        except RpcErrorReply as exc:
            error = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": exc.error})
            return 200, error, _NO_HEADERS
        decision = await gateway.keys.check(api_key, client_ip, _cost(payload, costs))
        if decision is None:
            return 401, _error_body(-32001, "unknown API key"), _NO_HEADERS
        if not decision.allowed:
            gateway.metrics.rate_limited.labels(chain).inc()
            retry = max(1, math.ceil(decision.retry_after_s))
            message = f"rate limit exceeded: retry after {retry}s"
            return 429, _error_body(-32005, message), [(b"retry-after", str(retry).encode())]
        reply = await proxy.handle_payload(payload)
        if reply is None:
            return 204, None, _NO_HEADERS
        return 200, reply, _NO_HEADERS

    return answer


def _fast_rpc(gateway: Gateway, inner: ASGIApp) -> ASGIApp:
    """``POST /rpc/...`` as a bare ASGI callable in front of Starlette.

    Measured (``bench/gateway_stack.py``, ``docs/gateway-benchmark.md``): Starlette's
    routing, middleware stack and ``Request``/``Response`` objects cost 20-40 µs of CPU
    per request, a large share of a cache hit. The JSON-RPC endpoint needs only the
    path, one header and the body, so it is answered here straight from the ASGI scope;
    every other route (WebSocket upgrades, ``/metrics``, ``/admin``, health, 405s) stays
    in Starlette.
    """
    answer = _rpc_answerer(gateway)
    limit = gateway.config.limits.max_body_bytes

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        path: str = scope["path"]
        parts = path[5:].split("/") if path.startswith("/rpc/") else []
        if not 1 <= len(parts) <= 2 or not all(parts):
            await inner(scope, receive, send)
            return
        body = await _read_body(scope, receive, limit)
        if body is _GONE:
            return  # the client went away
        client = scope.get("client")
        client_ip = client[0] if client else "unknown"
        status, reply, extra = await answer(
            parts[0], parts[1] if len(parts) == 2 else None, client_ip, body
        )
        if reply is None:
            headers = [*extra]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(reply)),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    return app


_GONE = b"\0gone"  # a sentinel no client body can be (it is compared by identity)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The body; None when it exceeds ``limit`` (read no further); ``_GONE`` when the
    client disconnected before sending it all."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                return None
            break
    message = await receive()
    if message["type"] != "http.request":
        return _GONE
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= limit else None
    chunks = [body]
    size = len(body)
    while True:
        if size > limit:
            return None
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
        if message["type"] != "http.request":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)


def build_app(gateway: Gateway) -> ASGIApp:
    """The ASGI app serving ``gateway``; its lifespan starts and stops the gateway."""
    config = gateway.config
    admin_token = os.environ.get(config.admin_token_env, "")

    async def websocket(ws: WebSocket) -> None:
        chain = ws.path_params["chain"]
        hub = gateway.hubs.get(chain)
        api_key = ws.path_params.get("api_key")
        if hub is None or (api_key is not None and gateway.keys.lookup(api_key) is None):
            await ws.close(code=1008)
            return
        await hub.serve(ws)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    async def readyz(request: Request) -> Response:
        missing = [
            name
            for name, proxy in gateway.proxies.items()
            if not any(u.in_rotation for u in proxy.upstreams)
        ]
        ready = gateway.ready and not missing
        body = {"ready": ready, "chains_without_upstream": missing}
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=_JSON)

    async def metrics(request: Request) -> Response:
        gateway.export_all()
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    async def admin(request: Request) -> Response:
        if not admin_token:
            return Response(
                orjson.dumps({"error": f"admin endpoint disabled: set {config.admin_token_env}"}),
                status_code=404,
                media_type=_JSON,
            )
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            return Response(
                b'{"error":"bad or missing bearer token"}',
                status_code=401,
                media_type=_JSON,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(orjson.dumps(gateway.status()), media_type=_JSON)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    async def not_post(request: Request) -> Response:
        return Response(status_code=405, headers={"Allow": "POST"})  # POSTs never get here

    starlette = Starlette(
        routes=[
            Route("/rpc/{chain}", not_post, methods=["POST"]),
            Route("/rpc/{chain}/{api_key}", not_post, methods=["POST"]),
            WebSocketRoute("/rpc/{chain}", websocket),
            WebSocketRoute("/rpc/{chain}/{api_key}", websocket),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/admin/upstreams", admin),
        ],
        lifespan=lifespan,
    )
    return _fast_rpc(gateway, starlette)


def uvicorn_config(gateway: Gateway, **overrides: Any) -> uvicorn.Config:
    """uvicorn with uvloop and httptools when installed, and one socket write per
    response (``httpserver``); measured: see docs/gateway-benchmark.md."""
    options: dict[str, Any] = {
        "host": gateway.config.host,
        "port": gateway.config.port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "ws": "websockets-sansio",
        # a WebSocket message is held to the same size as an HTTP body
        "ws_max_size": gateway.config.limits.max_body_bytes,
    }
    with contextlib.suppress(ImportError):
        from opsledger.gateway.httpserver import CorkedHttpToolsProtocol  # needs httptools

        options["http"] = CorkedHttpToolsProtocol
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    options.update(overrides)
    return uvicorn.Config(build_app(gateway), **options)


def serve(gateway: Gateway) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop uvicorn, the lifespan stops the gateway)."""
    uvicorn.Server(uvicorn_config(gateway)).run()
