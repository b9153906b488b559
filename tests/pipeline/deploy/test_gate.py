"""Protected environments: the newest release-gate verdict for the exact digest decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opsledger.core import PermissionDenied
from opsledger.pipeline.deploy.gate import require_release_gate
from tests.pipeline.deploy.helpers import Ledger, bodies, deploy

D = "sha256:" + "ef" * 32


class Verdicts:
    """A LedgerClient stand-in holding contract.verdict rows, newest first."""

    def __init__(self, *verdicts: tuple[str, str, str]) -> None:
        self.rows = [
            {
                "tx_id": tx_id * 64,
                "transaction": {
                    "body": {
                        "contract": contract,
                        "result": result,
                        "requirements": [
                            {"name": "scan", "result": result, "reason": "2 critical findings"}
                        ],
                    }
                },
            }
            for tx_id, contract, result in verdicts
        ]
        self.filters: list[dict[str, Any]] = []

    def list_transactions(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        self.filters.append(filters)
        return self.rows


def test_passing_verdict_for_the_digest() -> None:
    client = Verdicts(("b", "sla", "fail"), ("a", "release-gate", "pass"))
    assert require_release_gate(client, D, "production") == "a" * 64  # type: ignore[arg-type]
    assert client.filters[0]["subject"] == f"artifact:{D}"
    assert client.filters[0]["order"] == "desc"


def test_newest_gate_verdict_wins() -> None:
    client = Verdicts(("b", "release-gate", "fail"), ("a", "release-gate", "pass"))
    with pytest.raises(PermissionDenied, match=r"is fail \(scan: 2 critical findings\)"):
        require_release_gate(client, D, "production")  # type: ignore[arg-type]


def test_no_verdict() -> None:
    with pytest.raises(PermissionDenied, match="no release-gate verdict for artifact"):
        require_release_gate(Verdicts(), D, "production")  # type: ignore[arg-type]


def test_protected_deploy_without_a_verdict_records_and_runs_nothing(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = {
        "service": "shop",
        "environment": "production",
        "strategy": "blue-green",
        "target": {"kind": "script", "deploy": ["false"]},
    }
    out = deploy(ledger, raw, tmp_path, version="1.0.0", digest=D, state_dir=state_dir,
                 protected=frozenset({"production"}))  # fmt: skip
    assert out.status == "failure" and out.tx_ids == ()
    assert "production is protected: no release-gate verdict" in out.reason
    assert bodies(ledger, "deploy.started") == []
    # the same deploy to an unprotected environment runs (and fails on its hook)
    staging = deploy(ledger, {**raw, "environment": "staging"}, tmp_path, version="1.0.0",
                     digest=D, state_dir=state_dir,
                     protected=frozenset({"production"}))  # fmt: skip
    assert staging.status == "failure" and len(staging.tx_ids) == 2
