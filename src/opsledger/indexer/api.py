"""The index's query API: REST, GraphQL, ``/metrics`` and ``/healthz`` in one ASGI app.

For the loop (``opsledger index --listen 127.0.0.1:PORT``)::

    create_app(store: Store, *, registry: CollectorRegistry | None = None) -> FastAPI
    async serve_api(store: Store, listen: str = "127.0.0.1:8547", *,
                    registry: CollectorRegistry | None = None,
                    started: asyncio.Event | None = None) -> None
    api_server(store: Store, listen: str, *, registry=None) -> uvicorn.Server

``serve_api`` runs until cancelled, so the indexer loop can run it as a task beside
backfill and follow (``asyncio.create_task(serve_api(store, "127.0.0.1:8547"))``); the
API only reads through ``Store.list_tables``/``Store.query``/``Store.chain_states``.

Routes:

* ``GET /api/v1/tables``: tables and columns; ``GET /api/v1/tables/{table}``: a page
  (filters ``col=value``, ``col__gte=N``; ``after``, ``limit``, ``order``); see ``rest``.
* ``GET /api/v1/status``: per chain: indexed height, head, lag, events, events/s, reorgs.
* ``POST /graphql`` (GraphiQL on ``GET``): see ``graphql``.
* ``GET /metrics``: the indexer's Prometheus registry when one is given (404 otherwise).
* ``GET /healthz``: 200 ``{"status": "ok"}`` when the store answers, 503 when it fails.

Errors have the project's one JSON shape, ``{"error": {"code", "message", ...}}``, with
the same statuses as the ledger API (400 invalid input, 404 unknown table, 422 parameter
validation, 503 storage). The services may not import ``opsledger.api``, so the small
mapping is repeated here rather than shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsledger.core import InvalidInput, NotFound, OpsledgerError, StorageError, UpstreamError
from opsledger.indexer.graphql import graphql_router
from opsledger.indexer.rest import rest_router
from opsledger.indexer.storage import Store

__all__ = ["DEFAULT_LISTEN", "api_server", "create_app", "parse_listen", "serve_api"]

DEFAULT_LISTEN = "127.0.0.1:8547"
logger = logging.getLogger("opsledger.indexer.api")

_STATUS: dict[type, int] = {
    NotFound: 404,
    InvalidInput: 400,
    UpstreamError: 502,
    StorageError: 503,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("Invalid input: unknown column, bad value, bad cursor, bad limit"),
    404: _doc("No such table"),
    422: _doc("A parameter failed validation"),
    503: _doc("The index database failed"),
}


def _status_for(exc: OpsledgerError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def _error(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"error": body}, status_code=status)


async def _opsledger_error(request: Request, exc: Exception) -> JSONResponse:
    err = cast(OpsledgerError, exc)
    status = _status_for(err)
    if status == 500:
        logger.error("unhandled %s in %s", err.code, request.url.path, exc_info=err)
        return _error(500, {"code": "internal_error", "message": "internal server error"})
    return _error(status, err.to_dict())


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    field = ".".join(loc) or None
    message = str(first.get("msg", "invalid request"))
    body: dict[str, Any] = {
        "code": InvalidInput.code,
        "message": f"{field}: {message}" if field else message,
    }
    if field:
        body["field"] = field
    return _error(422, body)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    err = cast(StarletteHTTPException, exc)
    code = _HTTP_CODES.get(err.status_code, "http_error")
    return _error(err.status_code, {"code": code, "message": str(err.detail)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error in %s", request.url.path, exc_info=exc)
    return _error(500, {"code": "internal_error", "message": "internal server error"})


def _status(store: Store) -> dict[str, Any]:
    chains = []
    for state in store.chain_states():
        chains.append(
            {
                "chain": state.chain,
                "height": state.height,
                "head": state.head,
                "lag": max(state.head - state.height, 0) if state.head >= 0 else None,
                "events": state.events,
                "events_per_second": state.events_per_second,
                "reorgs": state.reorgs,
                "max_reorg_depth": state.max_reorg_depth,
                "last_reorg_depth": state.last_reorg_depth,
                "updated_at": state.updated_at,
            }
        )
    return {"chains": chains}


def create_app(store: Store, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The query API over ``store``; ``registry`` is served at ``/metrics`` when given.

    The GraphQL schema and the per-table REST routes are built from the tables that exist
    now: build the app after the indexer has created its tables (``Store.ensure_tables``).
    Tables added later are still served by ``/api/v1/tables/{table}``.
    """
    app = FastAPI(
        title="opsledger index",
        description="Query the chain event index: REST with filters and cursors, and GraphQL.",
        version="1",
    )
    app.add_exception_handler(OpsledgerError, _opsledger_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(rest_router(store, ERROR_RESPONSES))
    app.include_router(graphql_router(store), prefix="/graphql", include_in_schema=False)

    @app.get(
        "/api/v1/status", tags=["index"], summary="Indexed height, head, lag, reorgs per chain"
    )
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(_status, store)

    @app.get("/healthz", tags=["ops"], summary="200 while the index database answers")
    async def healthz() -> JSONResponse:
        try:
            await run_in_threadpool(store.chain_states)
        except Exception:  # any store failure means unhealthy; logged
            logger.exception("health check failed")
            return JSONResponse({"status": "failing"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics of the indexer",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 404: ERROR_RESPONSES[404]},
    )
    async def metrics() -> Response:
        if registry is None:
            raise NotFound("this API was started without the indexer's metrics")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8547"`` -> ``("127.0.0.1", 8547)``; raises ``InvalidInput``."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(
            f"listen address {listen!r}: use HOST:PORT (127.0.0.1:8547)", field="listen"
        )
    return host, int(port_text)


def api_server(
    store: Store, listen: str = DEFAULT_LISTEN, *, registry: CollectorRegistry | None = None
) -> uvicorn.Server:
    """A uvicorn server for the API (not started); ``server.should_exit = True`` stops it."""
    host, port = parse_listen(listen)
    config = uvicorn.Config(
        create_app(store, registry=registry),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return _EmbeddedServer(config)


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host: the indexer loop owns SIGINT and
    SIGTERM (it must commit or roll back before exiting), so the API must not take them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(
    store: Store,
    listen: str = DEFAULT_LISTEN,
    *,
    registry: CollectorRegistry | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Serve the API until cancelled; ``started`` is set once the socket listens."""
    server = api_server(store, listen, registry=registry)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task  # re-raise why it could not start (port in use ...)
                raise OSError(f"the index API did not start on {listen}")
            await asyncio.sleep(0.02)
        if started is not None:
            started.set()
        await asyncio.shield(task)
    finally:
        server.should_exit = True
        if not task.done():
            await asyncio.wait({task}, timeout=5)
