"""``opsledger dora``: read the transactions DORA needs from the ledger and compute.

The computation is ``opsledger.pipeline.dora`` (pure); this reads every transaction of
the types it needs up to ``now``, page by page. Pushes and deploys from before the window
are read too: a commit pushed last quarter and shipped today still has a lead time, and a
deploy before the window can be the one an incident in it names.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from opsledger.client.base import LedgerClient, all_transactions
from opsledger.core import Clock, InvalidInput, SystemClock, format_ts
from opsledger.pipeline.dora import DORA_TYPES, DoraQuery, compute_dora, parse_window

__all__ = ["dora_report", "read_dora_rows"]


def read_dora_rows(client: LedgerClient, until: dt.datetime) -> list[dict[str, Any]]:
    """Every transaction of the DORA types before ``until``, oldest first."""
    stamp = format_ts(until)
    return [
        row
        for tx_type in DORA_TYPES
        for row in all_transactions(client, {"type": tx_type, "until": stamp})
    ]


def dora_report(
    client: LedgerClient,
    *,
    window: str = "30d",
    service: str | None = None,
    environment: str = "production",
    until: str | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """The report over ``window`` ending at ``until`` (RFC 3339; default: now)."""
    try:
        span = parse_window(window)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="window") from exc
    now = (clock or SystemClock()).now()
    if until is not None:
        try:
            now = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidInput(
                f"until {until!r} must be a time such as 2026-11-30T00:00:00Z", field="until"
            ) from exc
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
    query = DoraQuery(now=now, window=span, service=service, environment=environment)
    return compute_dora(read_dora_rows(client, now), query)
