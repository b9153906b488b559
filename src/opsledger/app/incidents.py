"""Incident operations for the CLI: every step a signed transaction, state from the ledger.

``opsledger incident open|ack|assign|update|attribute|resolve|action|postmortem`` each
write one transaction through the home's client; ``list`` and ``show`` fold the
``incident.*`` history (``monitor.incidents``). An acknowledgement has an owner and an
expiry, and is not a silence: the alert keeps firing and is still recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from opsledger.client.base import LedgerClient, Signer, all_transactions, submit_signed
from opsledger.core import Clock, InvalidInput, NotFound, Subject, SystemClock, format_ts
from opsledger.monitor.incidents import (
    TIMELINE_TYPES,
    Incident,
    TimelineEntry,
    fold_incidents,
    incident_id_for,
    parse_ts,
    proposed_deploy,
    timeline,
)
from opsledger.monitor.postmortem import render_postmortem

__all__ = [
    "SEVERITIES",
    "IncidentDesk",
]

SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")
_LOOKBACK = dt.timedelta(hours=6)


class IncidentDesk:
    """Reads and writes incidents for one actor."""

    def __init__(
        self, client: LedgerClient, signer: Signer | None = None, clock: Clock | None = None
    ) -> None:
        self.client = client
        self.signer = signer
        self.clock = clock or SystemClock()

    # -- reading --
    def all(self) -> dict[str, Incident]:
        return fold_incidents(all_transactions(self.client, {"type": "incident.*"}))

    def get(self, incident_id: str) -> Incident:
        incident = self.all().get(incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id!r}", field="id")
        return incident

    def timeline(self, incident: Incident) -> list[TimelineEntry]:
        start = parse_ts(incident.opened_at) - _LOOKBACK
        # until is exclusive: a second past resolution keeps the resolving transaction
        end = (
            parse_ts(incident.resolved_at) + dt.timedelta(seconds=1)
            if incident.resolved_at
            else None
        )
        rows = self._rows(start, end)
        return timeline(rows, incident.id)

    def proposed_deploy(self, incident: Incident) -> dict[str, Any] | None:
        start = parse_ts(incident.opened_at) - _LOOKBACK
        rows = self._rows(start, parse_ts(incident.opened_at))
        row = proposed_deploy(rows, incident.opened_at, rejected=incident.rejected_deploys)
        return None if row is None else dict(row)

    def _rows(self, start: dt.datetime, end: dt.datetime | None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for tx_type in TIMELINE_TYPES:
            filters: dict[str, Any] = {"type": tx_type, "since": format_ts(start)}
            if end is not None:
                filters["until"] = format_ts(end)
            rows.extend(all_transactions(self.client, filters))
        return rows

    # -- writing --
    def _write(self, tx_type: str, incident_id: str, body: dict[str, Any]) -> str:
        if self.signer is None:
            raise InvalidInput("this operation needs a signer")
        stx = self.signer.sign(
            tx_type, Subject("incident", incident_id), {"id": incident_id, **body}
        )
        return submit_signed(self.client, self.signer, stx).tx_id

    def open(self, title: str, severity: str, *, service: str | None = None) -> str:
        if severity not in SEVERITIES:
            raise InvalidInput(f"severity must be one of {', '.join(SEVERITIES)}", field="severity")
        now = format_ts(self.clock.now())
        incident_id = incident_id_for(f"{title}\n{self.signer.actor if self.signer else ''}", now)
        body: dict[str, Any] = {"severity": severity, "title": title}
        if service:
            body["service"] = service
        self._write("incident.opened", incident_id, body)
        return incident_id

    def _open_incident(self, incident_id: str) -> Incident:
        incident = self.get(incident_id)
        if incident.state == "resolved":
            raise InvalidInput(f"{incident_id} is resolved", field="id")
        return incident

    def acknowledge(self, incident_id: str, owner: str, *, for_minutes: int = 60) -> str:
        self._open_incident(incident_id)
        if for_minutes <= 0:
            raise InvalidInput("an acknowledgement lasts at least a minute", field="for")
        until = format_ts(self.clock.now() + dt.timedelta(minutes=for_minutes))
        return self._write("incident.acknowledged", incident_id, {"owner": owner, "until": until})

    def assign(self, incident_id: str, owner: str) -> str:
        self._open_incident(incident_id)
        return self._write("incident.assigned", incident_id, {"owner": owner})

    def update(self, incident_id: str, text: str, *, severity: str | None = None) -> str:
        self._open_incident(incident_id)
        body: dict[str, Any] = {"text": text}
        if severity is not None:
            if severity not in SEVERITIES:
                raise InvalidInput(
                    f"severity must be one of {', '.join(SEVERITIES)}", field="severity"
                )
            body["severity"] = severity
        return self._write("incident.updated", incident_id, body)

    def attribute(
        self, incident_id: str, deploy: str, *, reject: bool = False, reason: str = ""
    ) -> str:
        self.get(incident_id)
        view = self.client.get_transaction(deploy)
        if view["transaction"]["type"] not in ("deploy.finished", "deploy.started"):
            raise InvalidInput(f"{deploy} is not a deploy", field="deploy")
        body: dict[str, Any] = {"deploy": deploy, "decision": "rejected" if reject else "confirmed"}
        if reason:
            body["reason"] = reason
        return self._write("incident.attributed", incident_id, body)

    def resolve(self, incident_id: str, summary: str = "") -> str:
        self._open_incident(incident_id)
        return self._write(
            "incident.resolved", incident_id, {"summary": summary} if summary else {}
        )

    def add_action(self, incident_id: str, title: str, owner: str, due: str | None = None) -> int:
        incident = self.get(incident_id)
        item = max(incident.action_items, default=0) + 1
        body: dict[str, Any] = {"item": item, "title": title, "owner": owner, "status": "open"}
        if due:
            body["due"] = due
        self._write("incident.action_item", incident_id, body)
        return item

    def complete_action(self, incident_id: str, item: int) -> str:
        incident = self.get(incident_id)
        current = incident.action_items.get(item)
        if current is None:
            raise NotFound(f"{incident_id} has no action item {item}", field="item")
        body: dict[str, Any] = {
            "item": item,
            "title": current.title,
            "owner": current.owner,
            "status": "done",
        }
        if current.due:
            body["due"] = current.due
        return self._write("incident.action_item", incident_id, body)

    def postmortem(self, incident_id: str, *, record: bool = True) -> str:
        incident = self.get(incident_id)
        proposal = self.proposed_deploy(incident)
        markdown = render_postmortem(
            incident, self.timeline(incident), proposal["tx_id"] if proposal else None
        )
        if record:
            digest = "sha256:" + hashlib.sha256(markdown.encode()).hexdigest()
            body: dict[str, Any] = {"digest": digest}
            if len(markdown) <= 65536:
                body["markdown"] = markdown
            self._write("incident.postmortem", incident_id, body)
        return markdown
