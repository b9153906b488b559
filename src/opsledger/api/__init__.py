"""The HTTP API: ``/api/v1`` (OpenAPI at ``/openapi.json``), ``/metrics``, ``/healthz``,
``/readyz``; one JSON error shape. ``serve`` (in ``opsledger.api.server``) runs it."""

from opsledger.api.app import create_app

__all__ = ["create_app"]
