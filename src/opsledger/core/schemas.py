"""JSON Schemas: one for the transaction envelope and one per transaction type's body.

A type without a schema here is refused. Bodies may carry more fields than the required
ones (``additionalProperties`` is open) so that producers can add context without a
schema change; the envelope itself is closed. Schemas are data: ``docs/transactions.md``
is checked against this table by a test, and ``opsledger schema TYPE`` prints one.

Validation uses ``fastjsonschema``, which compiles a schema to Python once: measured here
at ~10 µs per transaction against ~180 µs for ``jsonschema`` (the ingest budget is ~100
µs per transaction on one core). It does no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from typing import Any

import fastjsonschema

from opsledger.core.bodies_gateway import SCHEMAS as _GATEWAY_BODIES
from opsledger.core.bodies_indexer import SCHEMAS as _INDEXER_BODIES
from opsledger.core.bodies_monitor import SCHEMAS as _MONITOR_BODIES
from opsledger.core.bodies_pipeline import SCHEMAS as _PIPELINE_BODIES
from opsledger.core.errors import SchemaError, UnknownType
from opsledger.core.schema_parts import (
    DIGEST_PATTERN,
    LEDGER_PATTERN,
    TS_PATTERN,
    TX_ID_PATTERN,
    TYPE_PATTERN,
)
from opsledger.core.schema_parts import commit_ids as _commit_ids
from opsledger.core.schema_parts import count as _count
from opsledger.core.schema_parts import digest as _digest
from opsledger.core.schema_parts import name as _name
from opsledger.core.schema_parts import obj as _obj
from opsledger.core.schema_parts import pass_fail as _pass_fail
from opsledger.core.schema_parts import status as _status
from opsledger.core.schema_parts import string as _str
from opsledger.core.schema_parts import text as _text

__all__ = [
    "BODY_SCHEMAS",
    "DIGEST_PATTERN",
    "TX_ID_PATTERN",
    "envelope_schema",
    "transaction_schema",
    "transaction_types",
    "validate_transaction",
]

BODY_SCHEMAS: dict[str, dict[str, Any]] = {
    "note": _obj({"text": _text}),
    "code.pushed": _obj(
        {
            "repo": _str,
            "ref": _str,
            "commits": {
                "type": "array",
                "maxItems": 10000,
                "items": _obj({"id": _str, "author": _str, "time": _str}),
            },
        }
    ),
    "build.started": _obj({"artifact": _str, "commit": _str}),
    "build.finished": _obj(
        {"artifact": _str, "digest": _digest, "commit": _str, "status": _status}
    ),
    "test.finished": _obj(
        {"digest": _digest, "suite": _str, "passed": _count, "failed": _count, "status": _status}
    ),
    "scan.finished": _obj(
        {
            "digest": _digest,
            "scanner": _str,
            "findings": _obj({"critical": _count, "high": _count, "medium": _count, "low": _count}),
        }
    ),
    "approval.granted": _obj({"digest": _digest, "release": _str}),
    "release.requested": _obj(
        {"service": _str, "version": _str, "digest": _digest, "commits": _commit_ids}
    ),
    "release.approved": _obj({"service": _str, "version": _str, "digest": _digest}),
    "access.opened": _obj(
        {
            "environment": _str,
            "reason": _text,
            # arguments may be empty strings (grep "" file)
            "command": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "maxLength": 65536},
            },
        },
        {"change": _str, "host": _str},
    ),
    "access.closed": _obj(
        {
            "session": {"type": "string", "pattern": TX_ID_PATTERN},
            "exit_code": {"type": "integer"},
            "duration_ms": _count,
        },
        {"output_digest": _digest},
    ),
    "sla.violation": _obj(
        {"contract": _str, "objective": _str, "period": _str, "measured": _str, "target": _str}
    ),
    "slo.reported": _obj(
        {
            "service": _str,
            "window_start": {"type": "string", "pattern": TS_PATTERN},
            "window_end": {"type": "string", "pattern": TS_PATTERN},
            "total": _count,
            "good": _count,
        },
        {
            "latency_p95_ms": {"type": "number", "minimum": 0},
            "latency_p99_ms": {"type": "number", "minimum": 0},
            "source": _str,
        },
    ),
    "contract.deployed": _obj(
        {"name": _name, "version": _count, "source": _text, "digest": _digest}
    ),
    "contract.verdict": _obj(
        {
            "contract": _str,
            "version": _count,
            "trigger": {"type": "string", "pattern": TX_ID_PATTERN},
            "result": _pass_fail,
            "requirements": {
                "type": "array",
                "items": _obj(
                    {
                        "name": _str,
                        "result": _pass_fail,
                        "reason": {"type": "string", "maxLength": 4096},
                        "evidence": {
                            "type": "array",
                            "items": {"type": "string", "pattern": TX_ID_PATTERN},
                        },
                    }
                ),
            },
        }
    ),
    "identity.key_added": _obj(
        {
            "actor": _name,
            "public_key": {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$"},
            "roles": {"type": "array", "items": _name, "uniqueItems": True, "maxItems": 32},
        },
        {"kind": {"enum": ["person", "service", "node"]}},
    ),
    "identity.key_rotated": _obj(
        {
            "actor": _name,
            "old_key_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "public_key": {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$"},
        }
    ),
    "identity.key_revoked": _obj(
        {"actor": _name, "key_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
        {"reason": _text},
    ),
    "identity.role_defined": _obj(
        {
            "role": _name,
            "types": {
                "type": "array",
                "maxItems": 256,
                "items": {"type": "string", "pattern": "^(\\*|[a-z][a-z0-9_.]*(\\.\\*)?)$"},
            },
        }
    ),
}


for _service_bodies in (_PIPELINE_BODIES, _GATEWAY_BODIES, _INDEXER_BODIES, _MONITOR_BODIES):
    _twice = sorted(set(_service_bodies) & set(BODY_SCHEMAS))
    if _twice:  # pragma: no cover - a programming error caught by any import
        raise RuntimeError(f"transaction types defined twice: {', '.join(_twice)}")
    BODY_SCHEMAS.update(_service_bodies)


def envelope_schema() -> dict[str, Any]:
    """The signed transaction envelope, with ``body`` left open (checked per type)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "v",
            "type",
            "ledger",
            "actor",
            "key_id",
            "ts",
            "nonce",
            "subject",
            "body",
            "refs",
        ],
        "properties": {
            "v": {"const": 1},
            "type": {"type": "string", "pattern": TYPE_PATTERN, "maxLength": 64},
            # the ledger a transaction is for (its checkpoint origin; empty only in genesis)
            # so a transaction signed for one ledger can never be replayed into another
            "ledger": {"type": "string", "pattern": LEDGER_PATTERN},
            "actor": _name,
            "key_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "ts": {"type": "string", "pattern": TS_PATTERN},
            "nonce": _count,
            "subject": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "id"],
                "properties": {
                    "kind": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"},
                    "id": {"type": "string", "minLength": 1, "maxLength": 256},
                },
            },
            "body": {"type": "object"},
            "refs": {
                "type": "array",
                "maxItems": 64,
                "items": {"type": "string", "pattern": TX_ID_PATTERN},
            },
            "sig": {"type": "string", "pattern": "^[A-Za-z0-9+/]{86}==$"},
        },
    }


def transaction_types() -> list[str]:
    return sorted(BODY_SCHEMAS)


def transaction_schema(tx_type: str) -> dict[str, Any]:
    """The full schema of one transaction type (envelope with its body schema)."""
    if tx_type not in BODY_SCHEMAS:
        raise UnknownType(f"unknown transaction type {tx_type!r}", field="type")
    schema = envelope_schema()
    schema["properties"]["type"] = {"const": tx_type}
    schema["properties"]["body"] = copy.deepcopy(BODY_SCHEMAS[tx_type])
    return schema


@cache
def _body_validator(tx_type: str) -> Callable[[Any], Any]:
    """The body's schema alone: the envelope was checked already, once."""
    validator: Callable[[Any], Any] = fastjsonschema.compile(BODY_SCHEMAS[tx_type])
    return validator


_envelope_validator = fastjsonschema.compile(envelope_schema())


def _field_of(exc: Any, prefix: str = "") -> str:
    name = str(getattr(exc, "name", "") or "")
    inner = name.removeprefix("data")
    if prefix:
        return prefix + inner
    return inner.lstrip(".") or "transaction"


def validate_transaction(obj: Any) -> None:
    """Check a decoded (signed or unsigned) transaction; raise ``SchemaError`` naming the
    field, or ``UnknownType``. An unknown type is refused before its body is looked at."""
    try:
        _envelope_validator(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = _field_of(exc)
        raise SchemaError(f"{field}: {_reason(exc)}", field=field) from None
    tx_type = obj["type"]
    if tx_type not in BODY_SCHEMAS:
        raise UnknownType(f"unknown transaction type {tx_type!r}", field="type")
    try:
        _body_validator(tx_type)(obj["body"])
    except fastjsonschema.JsonSchemaValueException as exc:
        field = _field_of(exc, "body")
        raise SchemaError(f"{tx_type}: {field}: {_reason(exc)}", field=field) from None


def _reason(exc: Any) -> str:
    message = str(getattr(exc, "message", exc))
    name = str(getattr(exc, "name", ""))
    if name and message.startswith(name):
        message = message[len(name) :].strip()
    return message
