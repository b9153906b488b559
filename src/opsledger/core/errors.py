"""One error tree for the whole project, split by what the caller does next.

    OpsledgerError                     anything we raise on purpose
    ├── InvalidInput                   bad input: exit 2 / HTTP 400-422; nothing changed
    │   ├── SchemaError                a body or transaction does not match its JSON Schema
    │   ├── UnknownType                a transaction type we have no schema for
    │   ├── NotFound                   a named thing does not exist (HTTP 404)
    │   └── PermissionDenied           a known actor may not do this (HTTP 403)
    ├── VerificationFailed             evidence does not hold: exit 1; carries where and why
    │   └── ProofError                 a Merkle proof does not lead to the claimed root
    ├── Conflict                       the request clashes with ledger state (HTTP 409)
    │   └── ReplayRejected             nonce not above the actor's last: replay or reorder
    ├── UpstreamError                  a remote peer failed: retry or fail over
    ├── StorageError                   the store failed; the write was not acknowledged
    └── ConfigError                    configuration is wrong: exit 2; names the key

Only the edges (CLI, API) render these; everything else raises and lets them travel.
Adapters translate foreign exceptions into this tree exactly once, with ``from exc``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyRecorded",
    "ConfigError",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "OpsledgerError",
    "PermissionDenied",
    "ProofError",
    "ReplayRejected",
    "SchemaError",
    "StorageError",
    "UnknownType",
    "UpstreamError",
    "VerificationFailed",
]


class OpsledgerError(Exception):
    """Base of every error we raise on purpose.

    ``code`` is a short machine-readable name used by the API's JSON error body.
    ``details`` holds structured diagnostics (field, height, tx id, expected vs computed).
    """

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidInput(OpsledgerError):
    code = "invalid_input"


class SchemaError(InvalidInput):
    """Carries ``field``: the dotted path of the offending field (``body.digest``)."""

    code = "schema_error"


class UnknownType(InvalidInput):
    code = "unknown_type"


class NotFound(InvalidInput):
    code = "not_found"


class PermissionDenied(InvalidInput):
    code = "permission_denied"


class VerificationFailed(OpsledgerError):
    """Evidence does not hold. ``details`` name where: height, tx_id, expected, computed."""

    code = "verification_failed"


class ProofError(VerificationFailed):
    code = "proof_error"


class Conflict(OpsledgerError):
    code = "conflict"


class ReplayRejected(Conflict):
    code = "replay_rejected"


class AlreadyRecorded(Conflict):
    """A result that may exist once is already on the ledger; ``existing`` names it."""

    code = "already_recorded"


class UpstreamError(OpsledgerError):
    code = "upstream_error"


class StorageError(OpsledgerError):
    code = "storage_error"


class ConfigError(OpsledgerError):
    code = "config_error"
