"""Scheduled maintenance, as the ledger records it (``monitor.maintenance``).

A window names the status page's components it covers, when it starts and ends, and a
title users read. While a window is open its components show "Under maintenance" (and
are not counted as down); before it opens the page lists it as scheduled. Recording the
same id again replaces the window (a new time, or ``cancelled: true``), so the history
of every change stays on the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opsledger.monitor.incidents import parse_ts

__all__ = ["Maintenance", "fold_maintenance"]


@dataclass(frozen=True)
class Maintenance:
    id: str
    title: str
    components: tuple[str, ...]
    starts_at: str
    ends_at: str
    cancelled: bool = False

    def active(self, now: datetime) -> bool:
        return not self.cancelled and parse_ts(self.starts_at) <= now < parse_ts(self.ends_at)

    def upcoming(self, now: datetime) -> bool:
        return not self.cancelled and now < parse_ts(self.starts_at)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "components": list(self.components),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
        }


def fold_maintenance(rows: Iterable[Mapping[str, Any]]) -> dict[str, Maintenance]:
    """Windows by id from listing rows (oldest first); a later record replaces one."""
    windows: dict[str, Maintenance] = {}
    for row in rows:
        tx = row["transaction"]
        if tx["type"] != "monitor.maintenance":
            continue
        body = tx["body"]
        windows[body["id"]] = Maintenance(
            id=body["id"],
            title=body["title"],
            components=tuple(body["components"]),
            starts_at=body["starts_at"],
            ends_at=body["ends_at"],
            cancelled=bool(body.get("cancelled", False)),
        )
    return windows
