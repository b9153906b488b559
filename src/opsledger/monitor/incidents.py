"""Incidents as the ledger tells them: a fold over ``incident.*`` transactions.

Nothing about an incident lives outside the ledger: its state is recomputed from the
transactions that share its ``id``, so every acknowledgement, update and resolution is
signed, ordered and verifiable, and two processes reading the same ledger agree. The
timeline around an incident ("what changed just before this?") is read from the ledger
too, and the deploy it proposes as the cause is the newest deploy that finished before
the incident opened; a person confirms or rejects it (``incident.attributed``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "TIMELINE_TYPES",
    "ActionItem",
    "Incident",
    "TimelineEntry",
    "fold_incidents",
    "incident_id_for",
    "parse_ts",
    "proposed_deploy",
    "timeline",
]

TIMELINE_TYPES = (
    "alert.*",
    "deploy.*",
    "access.*",
    "contract.deployed",
    "gateway.*",
    "incident.*",
    "note",
)
"""What an incident's timeline shows, besides the incident's own transactions."""


@dataclass
class ActionItem:
    item: int
    title: str
    owner: str
    due: str | None
    status: str


@dataclass
class Incident:
    id: str
    severity: str
    title: str
    opened_at: str
    opened_by: str
    state: str = "open"  # open | acknowledged | resolved
    owner: str | None = None
    ack_until: str | None = None
    alert: str | None = None
    fingerprint: str | None = None
    resolved_at: str | None = None
    summary: str | None = None
    deploy: str | None = None  # the deploy it is attributed to (confirmed)
    rejected_deploys: list[str] = field(default_factory=list)
    updates: list[dict[str, str]] = field(default_factory=list)
    postmortem: str | None = None
    action_items: dict[int, ActionItem] = field(default_factory=dict)
    tx_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "state": self.state,
            "opened_at": self.opened_at,
            "opened_by": self.opened_by,
            "owner": self.owner,
            "ack_until": self.ack_until,
            "alert": self.alert,
            "resolved_at": self.resolved_at,
            "summary": self.summary,
            "deploy": self.deploy,
            "updates": list(self.updates),
            "postmortem": self.postmortem,
            "action_items": [
                vars(item) for item in sorted(self.action_items.values(), key=lambda a: a.item)
            ],
            "tx_ids": list(self.tx_ids),
        }


def parse_ts(text: str) -> datetime:
    """A transaction's ``ts`` (RFC 3339, UTC, ``Z``, up to nine fractional digits)."""
    head, _, fraction = text.rstrip("Z").partition(".")
    micros = (fraction + "000000")[:6] if fraction else "000000"
    return datetime.fromisoformat(f"{head}.{micros}+00:00")


def incident_id_for(seed: str, opened_at: str) -> str:
    """A short, stable id (``INC-1a2b3c4d``) from what opened the incident and when."""
    digest = hashlib.sha256(f"{seed}\n{opened_at}".encode()).hexdigest()
    return f"INC-{digest[:8]}"


def fold_incidents(rows: Iterable[Mapping[str, Any]]) -> dict[str, Incident]:
    """Incidents from listing rows (oldest first), as the ledger's order decides."""
    incidents: dict[str, Incident] = {}
    for row in rows:
        tx = row["transaction"]
        kind = tx["type"]
        body = tx["body"]
        if not kind.startswith("incident."):
            continue
        if kind == "incident.opened":
            if body["id"] in incidents:
                continue  # an id is opened once; a second opening is ignored, not merged
            incidents[body["id"]] = Incident(
                id=body["id"],
                severity=body["severity"],
                title=body["title"],
                opened_at=tx["ts"],
                opened_by=tx["actor"],
                alert=body.get("alert"),
                fingerprint=body.get("fingerprint"),
                deploy=None,
            )
            incidents[body["id"]].tx_ids.append(row["tx_id"])
            continue
        incident = incidents.get(body.get("id", ""))
        if incident is None:
            continue
        incident.tx_ids.append(row["tx_id"])
        if kind == "incident.acknowledged":
            incident.owner = body["owner"]
            incident.ack_until = body.get("until")
            if incident.state == "open":
                incident.state = "acknowledged"
        elif kind == "incident.assigned":
            incident.owner = body["owner"]
        elif kind == "incident.updated":
            incident.updates.append({"ts": tx["ts"], "actor": tx["actor"], "text": body["text"]})
            if body.get("severity"):
                incident.severity = body["severity"]
        elif kind == "incident.attributed":
            if body["decision"] == "confirmed":
                incident.deploy = body["deploy"]
            else:
                incident.rejected_deploys.append(body["deploy"])
                if incident.deploy == body["deploy"]:
                    incident.deploy = None
        elif kind == "incident.resolved":
            incident.state = "resolved"
            incident.resolved_at = tx["ts"]
            incident.summary = body.get("summary")
        elif kind == "incident.postmortem":
            incident.postmortem = row["tx_id"]
        elif kind == "incident.action_item":
            incident.action_items[body["item"]] = ActionItem(
                body["item"],
                body["title"],
                body["owner"],
                body.get("due"),
                body.get("status", "open"),
            )
    return incidents


@dataclass(frozen=True)
class TimelineEntry:
    ts: str
    type: str
    actor: str
    summary: str
    tx_id: str


def _summary(tx: Mapping[str, Any]) -> str:
    body = tx["body"]
    kind = tx["type"]
    if kind.startswith("deploy."):
        return (
            f"{kind.split('.')[1]} {body.get('service')} {body.get('version')}"
            f" to {body.get('environment')} ({body.get('strategy')})"
            + (f": {body['reason']}" if body.get("reason") else "")
        )
    if kind.startswith("alert."):
        return f"{kind.split('.')[1]} {body.get('alert')}" + (
            f": {body['summary']}" if body.get("summary") else ""
        )
    if kind.startswith("access."):
        if kind == "access.opened":
            return f"access to {body.get('environment')}: {body.get('reason')}"
        return f"access closed (exit {body.get('exit_code')})"
    for key in ("text", "title", "summary", "name", "reason"):
        value = body.get(key)
        if isinstance(value, str):
            return f"{kind}: {value}"
    return str(kind)


def timeline(
    rows: Iterable[Mapping[str, Any]], incident_id: str | None = None
) -> list[TimelineEntry]:
    """Entries in ledger order; incident transactions of other incidents are left out."""
    out: list[TimelineEntry] = []
    for row in rows:
        tx = row["transaction"]
        if tx["type"].startswith("incident.") and tx["body"].get("id") != incident_id:
            continue
        out.append(TimelineEntry(tx["ts"], tx["type"], tx["actor"], _summary(tx), row["tx_id"]))
    return sorted(out, key=lambda e: e.ts)


def proposed_deploy(
    rows: Iterable[Mapping[str, Any]], opened_at: str, *, rejected: Iterable[str] = ()
) -> Mapping[str, Any] | None:
    """The newest finished deploy before the incident opened, not already rejected."""
    opened = parse_ts(opened_at)
    skip = set(rejected)
    best: tuple[datetime, Mapping[str, Any]] | None = None
    for row in rows:
        tx = row["transaction"]
        if tx["type"] != "deploy.finished" or row["tx_id"] in skip:
            continue
        when = parse_ts(tx["ts"])
        if when <= opened and (best is None or when > best[0]):
            best = (when, row)
    return None if best is None else best[1]
