"""Deploy strategies (rolling, blue-green, canary) against targets, with health gates and
automatic rollback. (Interface fixed; being built.)

The pipeline runner hands a job's ``deploy:`` mapping to ``parse_deploy`` when it loads a
pipeline (so config errors surface before anything runs) and calls ``run_deploy`` when
the job runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opsledger.client.base import LedgerClient, Signer

__all__ = ["DeployContext", "DeployOutcome", "DeploySpec", "parse_deploy", "run_deploy"]


@dataclass(frozen=True)
class DeploySpec:
    """A validated ``deploy:`` mapping of a pipeline job."""

    service: str
    environment: str
    strategy: Literal["rolling", "blue-green", "canary"]
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class DeployContext:
    """What a deploy needs from the run that starts it."""

    client: LedgerClient
    signer: Signer
    version: str
    artifact_digest: str
    commits: list[str]
    workdir: Path
    log: Callable[[str], None]
    cancel: threading.Event


@dataclass(frozen=True)
class DeployOutcome:
    status: Literal["success", "failure", "rolled_back"]
    reason: str
    tx_ids: tuple[str, ...] = ()


def parse_deploy(raw: Mapping[str, Any], where: str) -> DeploySpec:
    """Validate a job's ``deploy:`` mapping; ``where`` is "file:line" for error messages."""
    raise NotImplementedError("deploy strategies are being built")


def run_deploy(spec: DeploySpec, ctx: DeployContext) -> DeployOutcome:
    """Deploy, gate on health, roll back on failure; record deploy.* on the ledger."""
    raise NotImplementedError("deploy strategies are being built")
