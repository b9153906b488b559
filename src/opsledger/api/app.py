"""Build the FastAPI application over one ``LocalClient``.

Everything the app needs is passed in: the client (and through it the node) and the
Prometheus registry. Nothing is created at import time, so two apps in one process (tests,
or a node serving two ledgers) never share metrics or state.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from opsledger.api.errors import ERROR_RESPONSES, install_error_handlers, json_error_responses
from opsledger.api.routes import build_router
from opsledger.api.webhooks import build_webhook_router
from opsledger.app.ledger_metrics import LedgerMetricsCollector
from opsledger.client.local import LocalClient
from opsledger.core import OpsledgerError, StorageError

__all__ = ["ApiMetrics", "create_app"]

_SUBMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Group commit waits a few milliseconds by design; the buckets resolve that range."""


class ApiMetrics:
    """The API's Prometheus metrics, registered in the registry it is given."""

    def __init__(self, registry: CollectorRegistry, client: LocalClient) -> None:
        node = client.node
        self.registry = registry
        self.accepted = Counter(
            "opsledger_transactions_accepted",
            "Transactions committed through the API",
            registry=registry,
        )
        self.refused = Counter(
            "opsledger_transactions_refused",
            "Transactions refused, by error code",
            ["code"],
            registry=registry,
        )
        self.submit_seconds = Histogram(
            "opsledger_submit_seconds",
            "Time from request body read to durable commit",
            ["endpoint"],
            buckets=_SUBMIT_BUCKETS,
            registry=registry,
        )
        self.head_height = Gauge(
            "opsledger_head_height", "Height of the newest block", registry=registry
        )
        self.head_height.set_function(lambda: node.head.height)
        self.log_size = Gauge(
            "opsledger_log_size", "Transactions in the log (Merkle tree size)", registry=registry
        )
        self.log_size.set_function(lambda: node.head.log_size)


def create_app(client: LocalClient, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The HTTP API over ``client``. ``registry`` defaults to a fresh one per app."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ApiMetrics(registry, client)
    registry.register(LedgerMetricsCollector(client))  # deploys, pipelines, DORA at /metrics
    app = FastAPI(
        title="opsledger",
        summary="A verifiable ledger of delivery and operations evidence",
        version="1",
        openapi_url="/openapi.json",
    )
    install_error_handlers(app)
    app.include_router(build_router(client, metrics))
    app.include_router(build_webhook_router(client, metrics))
    app.state.client = client
    app.state.metrics = metrics

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition",
            },
            **json_error_responses(500),
        },
        tags=["operations"],
    )
    def get_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the process answers", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the store answers",
        responses={503: ERROR_RESPONSES[503]},
        tags=["operations"],
    )
    async def readyz() -> dict[str, Any]:
        try:
            head = await run_in_threadpool(client.node.store.head)
        except OpsledgerError:
            raise
        except Exception as exc:  # a driver error the store did not translate
            raise StorageError(f"the store does not answer: {type(exc).__name__}") from exc
        if head is None:
            raise StorageError("the store holds no ledger")
        return {"status": "ready", "height": head.height}

    return app
