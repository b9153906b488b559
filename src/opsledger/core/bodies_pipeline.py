"""Bodies of the transactions the delivery pipeline writes: jobs and deploys."""

from __future__ import annotations

from typing import Any

from opsledger.core.schema_parts import (
    commit_ids,
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

SCHEMAS: dict[str, dict[str, Any]] = {
    "deploy.started": _deploy,
    "deploy.finished": _deploy,
    "deploy.rolled_back": _deploy,
    "job.started": obj({"run": string, "job": string}),
    "job.finished": obj(
        {"run": string, "job": string, "status": status, "exit_code": {"type": "integer"}}
    ),
}
