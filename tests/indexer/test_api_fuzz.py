"""Fuzz the index API's REST routes from its own OpenAPI document (schemathesis).

The document is built at collection time from an in-memory index seeded like the unit
tests (the per-table routes and their filters come from the tables, so the document needs
them). Each operation gets up to 20 generated requests, valid and invalid; none may be a
5xx, and every answer must match the document (status, content type, error shape).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from opsledger.indexer.api import create_app
from opsledger.indexer.storage import Store

from .test_api import seed_store

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]

_STORE = Store.open("sqlite:///:memory:")
seed_store(_STORE, blocks=25)
APP = create_app(_STORE)
schema = schemathesis.openapi.from_dict(APP.openapi())


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
def test_no_server_errors_and_answers_match_the_document(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(app=APP, checks=CHECKS)
