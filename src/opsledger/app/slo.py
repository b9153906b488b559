"""The SLO report: uptime in nines and error budget left per SLO, from the ledger.

The monitor records one ``slo.reported`` per SLO and report window (see
``opsledger.monitor.slo``); this sums the windows that start in a period. Without a
period the SLO's own rolling window (30 days by default) ending now is used, which is
what "budget left" means to the team on call. Reading only the ledger (never the
monitor's memory) makes the report reproducible and tamper-evident, and the same
evidence drives the ``sla`` contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from opsledger.app.sla import parse_period
from opsledger.client.base import LedgerClient, all_transactions
from opsledger.core import format_ts
from opsledger.monitor.slo import SLO, budget_figures

__all__ = ["slo_report"]


def _reports(client: LedgerClient, slo: SLO, start: str, end: str) -> list[dict[str, Any]]:
    rows = all_transactions(client, {"type": "slo.reported", "subject": f"service:{slo.service}"})
    picked = []
    for row in rows:
        body = row["transaction"]["body"]
        # reports of other SLOs on the same service (or from other tools) are not ours
        if body.get("slo", slo.name) != slo.name:
            continue
        if start <= body["window_start"] < end:
            picked.append(body)
    return picked


def slo_report(
    client: LedgerClient,
    slos: Sequence[SLO],
    period: str | None = None,
    *,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """One row per SLO: availability, nines, budget left, and the windows counted."""
    moment = now or datetime.now(UTC)
    rows = []
    for slo in slos:
        if period is None:
            start = format_ts(moment - timedelta(seconds=slo.window))
            end = format_ts(moment + timedelta(seconds=1))
            label = f"last {_days(slo.window)}"
        else:
            start, end = parse_period(period)
            label = period
        reports = _reports(client, slo, start, end)
        total = sum(int(r["total"]) for r in reports)
        good = sum(int(r["good"]) for r in reports)
        p95 = [float(r["latency_p95_ms"]) for r in reports if "latency_p95_ms" in r]
        rows.append(
            {
                "slo": slo.name,
                "service": slo.service,
                "target": slo.target,
                "sli": slo.sli,
                "threshold_ms": slo.threshold_ms,
                "period": label,
                "from": start,
                "until": end,
                "reports": len(reports),
                **budget_figures(total, good, slo.objective),
                "worst_window_p95_ms": max(p95) if p95 else None,
            }
        )
    return rows


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g}d" if days >= 1 else f"{seconds / 3600:g}h"
