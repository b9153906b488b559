"""Helpers for the deploy tests: the ledger handle, sample-service versions, deploy calls."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from opsledger.app import Home
from opsledger.client.base import LedgerClient, Signer
from opsledger.pipeline.deploy import DeployContext, DeployOutcome, parse_deploy, run_deploy

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "pipeline-service" / "app.py"


@dataclass
class Ledger:
    home: Home
    client: LedgerClient
    signer: Signer

    def rows(self, tx_type: str) -> list[dict[str, Any]]:
        return self.client.list_transactions({"type": tx_type, "order": "asc"})


def build_version(workdir: Path, version: str, fault: str = "none") -> str:
    """dist/app.py for ``version`` (with ``fault``) in ``workdir``; returns its digest."""
    source = SAMPLE.read_text()
    source = source.replace('VERSION = "1.0.0"', f'VERSION = "{version}"')
    source = source.replace('FAULT = "none"', f'FAULT = "{fault}"')
    dist = workdir / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "app.py").write_text(source)
    return "sha256:" + hashlib.sha256(source.encode()).hexdigest()


def process_deploy(strategy: str, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "service": "shop",
        "environment": "production",
        "strategy": strategy,
        "target": {
            "kind": "process",
            "command": "python {artifact} --port {port}",
            "artifact": "dist/app.py",
            "instances": 2,
        },
        "health": {"http": {"path": "/health", "status": 200}, "timeout": "3s"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def deploy(
    ledger: Ledger,
    raw: dict[str, Any],
    workdir: Path,
    *,
    version: str,
    digest: str,
    state_dir: Path,
    commits: list[str] | None = None,
    protected: frozenset[str] = frozenset(),
    log: list[str] | None = None,
) -> DeployOutcome:
    lines = log if log is not None else []
    return run_deploy(
        parse_deploy(raw, "test.yaml"),
        DeployContext(
            client=ledger.client,
            signer=ledger.signer,
            version=version,
            artifact_digest=digest,
            commits=commits or [],
            workdir=workdir,
            log=lines.append,
            cancel=threading.Event(),
            state_dir=state_dir,
            protected_environments=protected,
        ),
    )


def switch_url(state_dir: Path, service: str = "shop", environment: str = "production") -> str:
    import json

    info = json.loads((state_dir / service / environment / "switch.json").read_text())
    return str(info["url"])


def versions_served(url: str, count: int = 10) -> set[str]:
    """The versions that answered ``count`` GETs through the switch."""
    seen = set()
    with httpx.Client(timeout=5.0) as client:
        for _ in range(count):
            seen.add(str(client.get(url + "/").json()["version"]))
    return seen


def bodies(ledger: Ledger, tx_type: str) -> list[dict[str, Any]]:
    return [dict(r["transaction"]["body"]) for r in ledger.rows(tx_type)]
