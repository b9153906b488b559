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
import gc
import hmac
import math
import os
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from opsledger.gateway.httpserver import Answer, Pending, RpcEndpoint, as_answer, protocol_for
from opsledger.gateway.jsonrpc import INVALID_REQUEST, RpcErrorReply, parse_payload
from opsledger.gateway.proxy import ChainProxy
from opsledger.gateway.ratelimit import Decision
from opsledger.gateway.service import Gateway

__all__ = ["build_app", "rpc_endpoint", "serve", "uvicorn_config"]

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


_NO_HEADERS: list[tuple[bytes, bytes]] = []


def rpc_endpoint(gateway: Gateway) -> RpcEndpoint:
    """What ``POST /rpc/{chain}[/{api_key}]`` answers, independent of the HTTP layer.

    ``respond`` returns the answer directly when nothing needs awaiting (a cached
    result, the head view, an error, no limit or an in-process one) and a coroutine
    otherwise: the HTTP protocol creates a task only for the latter.
    """
    config = gateway.config
    costs = dict(config.rate_limits.method_costs)
    limit = config.limits.max_body_bytes
    keys = gateway.keys
    proxies = gateway.proxies

    def respond(
        chain: str, api_key: str | None, client_ip: str, body: bytes | None
    ) -> Answer | Pending:
        proxy = proxies.get(chain)
        if proxy is None:
            return 404, _error_body(-32601, f"unknown chain {chain!r}"), _NO_HEADERS
        if body is None:
            return 413, _error_body(INVALID_REQUEST, f"request body exceeds {limit} bytes"), []
        try:
            payload = parse_payload(body)
        except RpcErrorReply as exc:
            error = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": exc.error})
            return 200, error, _NO_HEADERS
        decision = keys.admit(api_key, client_ip, lambda: _cost(payload, costs))
        if decision is not None and not isinstance(decision, Decision):
            return _admit_later(proxy, decision, payload)
        refused = _refusal(gateway, chain, decision)
        if refused is not None:
            return refused
        reply = proxy.respond(payload)
        if reply is None or type(reply) is bytes:
            return _answer(reply)
        return reply  # type: ignore[return-value]  # awaited by the protocol: bytes or None

    async def _admit_later(
        proxy: ChainProxy, pending: Coroutine[Any, Any, Decision], payload: Any
    ) -> Answer:
        decision = await pending
        refused = _refusal(gateway, proxy.chain.name, decision)
        if refused is not None:
            return refused
        return _answer(await proxy.handle_payload(payload))

    return RpcEndpoint(respond, limit)


def _refusal(gateway: Gateway, chain: str, decision: Decision | None) -> Answer | None:
    if decision is None:
        return 401, _error_body(-32001, "unknown API key"), _NO_HEADERS
    if decision.allowed:
        return None
    gateway.metrics.rate_limited.labels(chain).inc()
    retry = max(1, math.ceil(decision.retry_after_s))
    message = f"rate limit exceeded: retry after {retry}s"
    return 429, _error_body(-32005, message), [(b"retry-after", str(retry).encode())]


def _answer(reply: bytes | None) -> Answer:
    return (204, None, _NO_HEADERS) if reply is None else (200, reply, _NO_HEADERS)


def _fast_rpc(gateway: Gateway, inner: ASGIApp) -> ASGIApp:
    """``POST /rpc/...`` as a bare ASGI callable in front of Starlette.

    The gateway's own HTTP protocol (``httpserver``) answers ``POST /rpc/...`` without
    ASGI; this callable serves the requests it passes to the ASGI app anyway (those
    forwarded by a trusted proxy, whose ``X-Forwarded-For`` uvicorn's middleware
    resolves) and any other ASGI server. Starlette's routing, middleware stack and
    ``Request``/``Response`` objects cost 20-40 µs of CPU per request (measured,
    ``docs/gateway-benchmark.md``), so the endpoint is answered straight from the ASGI
    scope; every other route (WebSocket upgrades, ``/metrics``, ``/admin``, health,
    405s) stays in Starlette.
    """
    respond = rpc_endpoint(gateway).respond
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
        answer = respond(parts[0], parts[1] if len(parts) == 2 else None, client_ip, body)
        status, reply, extra = answer if isinstance(answer, tuple) else as_answer(await answer)
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

    costs = dict(config.rate_limits.method_costs)

    async def websocket(ws: WebSocket) -> None:
        chain = ws.path_params["chain"]
        hub = gateway.hubs.get(chain)
        api_key = ws.path_params.get("api_key")
        if hub is None or (api_key is not None and gateway.keys.lookup(api_key) is None):
            await ws.close(code=1008)
            return
        client_ip = ws.client.host if ws.client else "unknown"

        async def admit(payload: Any) -> dict[str, Any] | None:
            """The HTTP path's limits, per message on the socket (subscriptions too)."""
            decision = await gateway.keys.check(api_key, client_ip, _cost(payload, costs))
            refused = _refusal(gateway, chain, decision)
            if refused is None:
                return None
            error: dict[str, Any] = orjson.loads(refused[1] or b"{}")["error"]
            return error

        await hub.serve(ws, admit=admit)

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
    """uvicorn with uvloop when installed and the gateway's own HTTP/1.1 connection
    protocol (``httpserver``: JSON-RPC answered without ASGI, one socket write per
    answer); measured: see docs/gateway-benchmark.md."""
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
    options["http"] = protocol_for(rpc_endpoint(gateway))
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    options.update(overrides)
    return uvicorn.Config(build_app(gateway), **options)


def serve(gateway: Gateway) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop uvicorn, the lifespan stops the gateway).

    The process is the gateway's own, so its garbage collector is tuned here (not in
    ``Gateway``, which tests run inside other processes): ``perf`` put the cyclic
    collector at 8% of the CPU of a cache miss, mostly full collections walking every
    object imported at start-up. Those are frozen (``gc.freeze``: never traversed
    again), and the youngest generation is collected every 20,000 allocations instead
    of 700: requests free almost everything by reference counting, so what a
    collection finds is the objects of requests still in flight, not garbage.
    """
    config = uvicorn_config(gateway)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    uvicorn.Server(config).run()
