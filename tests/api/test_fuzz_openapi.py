"""Fuzz every operation from the app's own OpenAPI document with schemathesis.

Each operation gets a fresh ledger (the ``app`` fixture) seeded with a few transactions,
and up to 30 generated requests, valid and invalid (schemathesis' positive and negative
modes). No request may produce a 5xx, and every answer must match what the document
says: status documented, content type, response schema (including the one error shape).

The document is read at collection time from an app built over a placeholder client:
it describes routes, not data, so it needs no ledger. (``schemathesis.pytest.
from_fixture`` would load it per test, but it does not work with pytest 9 yet.)
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import checks

from opsledger.api import create_app
from opsledger.client.base import Signer
from opsledger.client.local import LocalClient
from opsledger.core import SignedTransaction

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _document() -> dict[str, Any]:
    placeholder = cast(LocalClient, SimpleNamespace(node=SimpleNamespace()))
    return create_app(placeholder).openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture
def seeded_app(
    app: FastAPI,
    local_client: LocalClient,
    signer: Signer,
    make_note: Callable[..., SignedTransaction],
) -> FastAPI:
    for i in range(3):
        local_client.submit(make_note(signer, f"seed {i}"))
    return app


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
def test_no_server_errors_and_answers_match_the_document(
    case: schemathesis.Case[Any], seeded_app: FastAPI
) -> None:
    case.call_and_validate(app=seeded_app, checks=CHECKS)
