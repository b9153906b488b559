"""The SLA report: per SLA contract and period, met or violated, error budget left and
credits owed, computed from the ``slo.reported`` evidence and the recorded verdicts.

An SLA contract is one triggered by ``slo.reported`` (the built-in ``sla`` or a version
with the parties' own numbers). For a period, every report of the contract's service
whose window starts in the period counts; availability is good / total over all of them.
The error budget is the share of requests the target allows to fail; what is left is
``1 - failed / allowed``. Credits follow the contract's ``credits`` tiers: the largest
percentage among the tiers whose ``below`` bound the availability is under.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from opsledger.app.contracts import deployed_contracts
from opsledger.client.base import LedgerClient, all_transactions
from opsledger.contracts import parse_contract
from opsledger.core import InvalidInput

__all__ = ["parse_period", "sla_report"]


def parse_period(text: str) -> tuple[str, str]:
    """``2026-11`` (a month), ``2026-11-21`` (a day), or ``START/END`` dates → the
    half-open range [start, end) as timestamps in the ledger's format."""
    try:
        if "/" in text:
            start_text, _, end_text = text.partition("/")
            start = dt.date.fromisoformat(start_text)
            end = dt.date.fromisoformat(end_text)
        elif len(text) == 7:
            start = dt.date.fromisoformat(text + "-01")
            end = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        else:
            start = dt.date.fromisoformat(text)
            end = start + dt.timedelta(days=1)
    except ValueError:
        raise InvalidInput(
            f"period {text!r}: use YYYY-MM, YYYY-MM-DD or YYYY-MM-DD/YYYY-MM-DD", field="period"
        ) from None
    if end <= start:
        raise InvalidInput("the period ends before it starts", field="period")
    return f"{start.isoformat()}T00:00:00.000Z", f"{end.isoformat()}T00:00:00.000Z"


def _credit(availability: float, tiers: list[dict[str, Any]]) -> float:
    owed = [float(t["percent"]) for t in tiers if availability < float(t["below"])]
    return max(owed, default=0.0)


def sla_report(
    client: LedgerClient, period: str, contract: str | None = None
) -> list[dict[str, Any]]:
    start, end = parse_period(period)
    latest: dict[str, dict[str, Any]] = {}
    for deployment in deployed_contracts(client):
        latest[deployment["name"]] = deployment
    rows = []
    for name, deployment in sorted(latest.items()):
        if contract is not None and name != contract:
            continue
        parsed = parse_contract(deployment["source"])
        if "slo.reported" not in parsed.triggers:
            continue
        params = parsed.params
        service = params.get("service")
        reports = [
            view
            for view in all_transactions(
                client, {"type": "slo.reported", "subject": f"service:{service}"}
            )
            if start <= view["transaction"]["body"]["window_start"] < end
        ]
        total = sum(int(r["transaction"]["body"]["total"]) for r in reports)
        good = sum(int(r["transaction"]["body"]["good"]) for r in reports)
        target = float(params.get("availability", 100.0))
        availability = 100.0 if total == 0 else 100.0 * good / total
        allowed = (1 - target / 100.0) * total
        failed = total - good
        budget_left = (
            100.0
            if allowed == 0 and failed == 0
            else (0.0 if allowed == 0 else max(-999.0, 100.0 * (1 - failed / allowed)))
        )
        report_ids = {r["tx_id"] for r in reports}
        verdicts = [
            v
            for v in all_transactions(
                client, {"type": "contract.verdict", "subject": f"service:{service}"}
            )
            if v["transaction"]["body"]["contract"] == name
            and v["transaction"]["body"]["trigger"] in report_ids
        ]
        violations = [
            v
            for v in all_transactions(
                client, {"type": "sla.violation", "subject": f"service:{service}"}
            )
            if v["transaction"]["body"].get("contract") == name
            and start <= v["transaction"]["body"]["period"].split("/")[0] < end
        ]
        met = all(v["transaction"]["body"]["result"] == "pass" for v in verdicts) and (
            availability >= target
        )
        rows.append(
            {
                "contract": name,
                "version": deployment["version"],
                "service": service,
                "provider": params.get("provider"),
                "consumer": params.get("consumer"),
                "period": period,
                "reports": len(reports),
                "requests": total,
                "failed": failed,
                "availability": round(availability, 4),
                "target": target,
                "status": "met" if met else "violated",
                "error_budget_left_percent": round(budget_left, 2),
                "violations": [v["tx_id"] for v in violations],
                "credit_percent": _credit(availability, list(params.get("credits", []))),
            }
        )
    return rows
