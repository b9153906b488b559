"""The building blocks of body schemas, shared by every ``bodies_*`` module.

Each service owns the bodies of the transactions it writes in its own module
(``bodies_pipeline``, ``bodies_gateway``, ``bodies_indexer``); ``schemas`` merges them and
refuses a type defined twice. Keeping them apart lets each service's evidence evolve
without touching the others'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DIGEST_PATTERN",
    "LEDGER_PATTERN",
    "NAME_PATTERN",
    "TS_PATTERN",
    "TX_ID_PATTERN",
    "TYPE_PATTERN",
    "commit_ids",
    "count",
    "digest",
    "name",
    "obj",
    "pass_fail",
    "status",
    "string",
    "text",
    "timestamp",
    "tx_id",
]

DIGEST_PATTERN = "^sha256:[0-9a-f]{64}$"
TX_ID_PATTERN = "^[0-9a-f]{64}$"
NAME_PATTERN = "^[a-z0-9][a-z0-9._@-]{0,63}$"
TYPE_PATTERN = "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)*$"
LEDGER_PATTERN = "^(|opsledger/[0-9a-f]{32}(/fork/[0-9a-f]{8})?)$"
TS_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?Z$"

string: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 4096}
text: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 65536}
count: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
digest: dict[str, Any] = {"type": "string", "pattern": DIGEST_PATTERN}
name: dict[str, Any] = {"type": "string", "pattern": NAME_PATTERN}
status: dict[str, Any] = {"enum": ["success", "failure"]}
pass_fail: dict[str, Any] = {"enum": ["pass", "fail"]}
commit_ids: dict[str, Any] = {"type": "array", "items": string, "maxItems": 10000}


timestamp: dict[str, Any] = {"type": "string", "pattern": TS_PATTERN}
tx_id: dict[str, Any] = {"type": "string", "pattern": TX_ID_PATTERN}


def obj(required: Mapping[str, Any], optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An object schema: ``required`` fields must be present, ``optional`` may be."""
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }
