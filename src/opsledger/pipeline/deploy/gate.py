"""The release-gate check a deploy to a protected environment must pass before it starts.

A protected environment accepts only an artifact whose *newest* ``release-gate`` verdict
(subject ``artifact:<digest>``, recorded by the node's contract engine) passed. Newest,
because the gate re-evaluates as evidence arrives: a pass followed by a fail (say, a new
critical scan finding) must stop the deploy. The verdict is looked up by the exact digest
being deployed, so approving one build never lets another through.
"""

from __future__ import annotations

from typing import Any

from opsledger.client.base import LedgerClient
from opsledger.core import PermissionDenied

__all__ = ["RELEASE_GATE", "require_release_gate"]

RELEASE_GATE = "release-gate"
_SCAN = 200  # newest verdicts about one artifact looked at (all contracts)


def _newest_gate_verdict(client: LedgerClient, digest: str) -> dict[str, Any] | None:
    rows = client.list_transactions(
        {
            "type": "contract.verdict",
            "subject": f"artifact:{digest}",
            "order": "desc",
            "limit": _SCAN,
        }
    )
    for row in rows:
        if row["transaction"]["body"].get("contract") == RELEASE_GATE:
            return row
    return None


def require_release_gate(client: LedgerClient, digest: str, environment: str) -> str:
    """The tx id of the passing verdict, or ``PermissionDenied`` saying what is missing."""
    verdict = _newest_gate_verdict(client, digest)
    if verdict is None:
        raise PermissionDenied(
            f"{environment} is protected: no release-gate verdict for artifact {digest} "
            "on the ledger (request a release and get it approved first)",
            field="digest",
        )
    body = verdict["transaction"]["body"]
    if body.get("result") != "pass":
        failed = [
            f"{r.get('name')}: {r.get('reason')}"
            for r in body.get("requirements", [])
            if isinstance(r, dict) and r.get("result") != "pass"
        ]
        raise PermissionDenied(
            f"{environment} is protected: the newest release-gate verdict for {digest} "
            f"({verdict['tx_id'][:12]}) is {body.get('result')}"
            + (f" ({'; '.join(failed)})" if failed else ""),
            field="digest",
        )
    return str(verdict["tx_id"])
