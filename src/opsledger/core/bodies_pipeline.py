"""Bodies of the transactions the delivery pipeline writes: runs, jobs and deploys."""

from __future__ import annotations

from typing import Any

from opsledger.core.schema_parts import (
    commit_ids,
    count,
    digest,
    obj,
    status,
    string,
    text,
    tx_id,
)

__all__ = ["SCHEMAS"]

_deploy = obj(
    {
        "service": string,
        "environment": string,
        "version": string,
        "digest": digest,
        "strategy": {"enum": ["rolling", "blue-green", "canary", "recreate"]},
        "status": {"enum": ["started", "success", "failure", "rolled_back"]},
        "commits": commit_ids,
    },
    {"reason": text, "deploy": tx_id},
)

_outcome: dict[str, Any] = {
    "enum": ["success", "failure", "timeout", "cancelled", "skipped", "error"]
}
_artifacts: dict[str, Any] = {"type": "object", "additionalProperties": digest}

SCHEMAS: dict[str, dict[str, Any]] = {
    "deploy.started": _deploy,
    "deploy.finished": _deploy,
    "deploy.rolled_back": _deploy,
    "job.started": obj({"run": string, "job": string}, {"stage": string, "attempt": count}),
    "job.finished": obj(
        {"run": string, "job": string, "status": status, "exit_code": {"type": "integer"}},
        {
            "stage": string,
            "outcome": _outcome,
            "duration_ms": count,
            "log_digest": digest,
            "artifacts": _artifacts,
            "attempts": count,
            "reason": text,
        },
    ),
    "pipeline.started": obj(
        {"pipeline": string, "run": string, "digest": digest},
        {"source": string, "jobs": {"type": "array", "items": string, "maxItems": 100000}},
    ),
    "pipeline.finished": obj(
        {
            "pipeline": string,
            "run": string,
            "digest": digest,
            "status": {"enum": ["success", "failure", "cancelled"]},
            "jobs": {"type": "object", "additionalProperties": _outcome},
        },
        {"duration_ms": count},
    ),
}
