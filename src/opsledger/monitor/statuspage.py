"""What the public status page says: components, their states, incidents, uptime.

The page is for a company's users, so it shows component names and states, incident
titles and their public updates, and 90 days of uptime, never target URLs, label values
or alert internals. Uptime per day comes from the ledger's ``alert.fired`` /
``alert.resolved`` history of critical alerts on the component's targets, so it survives
restarts and any reader can recompute it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from opsledger.monitor.config import MonitorConfig
from opsledger.monitor.incidents import Incident, parse_ts
from opsledger.monitor.maintenance import Maintenance
from opsledger.monitor.rules import Alert

__all__ = ["STATES", "component_states", "status_document", "uptime_days"]

STATES = ("operational", "degraded", "partial_outage", "major_outage", "maintenance")
_RANK = {state: i for i, state in enumerate(STATES[:4])}


def _components(config: MonitorConfig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for target in config.targets:
        out.setdefault(target.component or target.name, []).append(target.name)
    return out


def component_states(
    config: MonitorConfig, firing: Sequence[Alert], maintenance: Iterable[str] = ()
) -> dict[str, str]:
    """Each component's state from the alerts firing on its targets."""
    under_maintenance = set(maintenance)
    states: dict[str, str] = {}
    for component, targets in _components(config).items():
        if component in under_maintenance:
            states[component] = "maintenance"
            continue
        critical: set[str] = set()
        warning = False
        for alert in firing:
            labels = dict(alert.labels)
            if labels.get("target") not in targets:
                continue
            if labels.get("severity") == "critical":
                critical.add(labels["target"])
            else:
                warning = True
        if critical:
            states[component] = (
                "major_outage" if len(critical) == len(targets) else "partial_outage"
            )
        else:
            states[component] = "degraded" if warning else "operational"
    return states


def uptime_days(
    config: MonitorConfig, alert_rows: Iterable[Mapping[str, Any]], now: datetime, days: int = 90
) -> dict[str, list[dict[str, Any]]]:
    """Per component, per day (oldest first): fraction of the day without a critical alert."""
    components = _components(config)
    owner = {t: c for c, targets in components.items() for t in targets}
    open_since: dict[str, datetime] = {}
    spans: dict[str, list[tuple[datetime, datetime]]] = {c: [] for c in components}
    for row in alert_rows:
        tx = row["transaction"]
        body = tx["body"]
        fingerprint = body.get("fingerprint")
        if not fingerprint:
            continue
        if tx["type"] == "alert.fired" and body.get("severity") == "critical":
            target = (body.get("labels") or {}).get("target")
            if target in owner:
                open_since[fingerprint] = parse_ts(tx["ts"])
                spans[owner[target]].append((open_since[fingerprint], now))
        elif tx["type"] == "alert.resolved" and fingerprint in open_since:
            start = open_since.pop(fingerprint)
            for component_spans in spans.values():
                for i, (s, _) in enumerate(component_spans):
                    if s == start:
                        component_spans[i] = (s, parse_ts(tx["ts"]))
    first = (now - timedelta(days=days - 1)).date()
    out: dict[str, list[dict[str, Any]]] = {}
    for component, component_spans in spans.items():
        bars = []
        for offset in range(days):
            day: date = first + timedelta(days=offset)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            end = min(start + timedelta(days=1), now)
            length = (end - start).total_seconds()
            down = 0.0
            for s, e in component_spans:
                overlap = (min(e, end) - max(s, start)).total_seconds()
                down += max(overlap, 0.0)
            uptime = 1.0 if length <= 0 else max(0.0, 1.0 - down / length)
            bars.append({"date": day.isoformat(), "uptime": round(uptime, 5)})
        out[component] = bars
    return out


def status_document(
    config: MonitorConfig,
    firing: Sequence[Alert],
    incidents: Iterable[Incident],
    uptime: Mapping[str, list[dict[str, Any]]],
    now: datetime,
    *,
    maintenance: Iterable[Maintenance] = (),
) -> dict[str, Any]:
    windows = list(maintenance)
    under = {c for w in windows if w.active(now) for c in w.components}
    states = component_states(config, firing, under)
    worst = max(
        (s for s in states.values() if s in _RANK), key=lambda s: _RANK[s], default="operational"
    )
    if worst == "operational" and "maintenance" in states.values():
        worst = "maintenance"
    active = [i for i in incidents if i.state != "resolved"]
    recent = [i for i in incidents if i.state == "resolved"][-10:]
    return {
        "title": config.status_title,
        "updated": now.isoformat().replace("+00:00", "Z"),
        "status": worst,
        "components": [
            {
                "name": name,
                "state": state,
                "uptime_90d": _average(uptime.get(name, [])),
                "days": uptime.get(name, []),
            }
            for name, state in states.items()
        ],
        "incidents": [_public(i) for i in active],
        "recent_incidents": [_public(i) for i in reversed(recent)],
        "maintenance": [
            {**w.public(), "state": "in_progress" if w.active(now) else "scheduled"}
            for w in sorted(windows, key=lambda w: w.starts_at)
            if w.active(now) or w.upcoming(now)
        ],
    }


def _average(days: list[dict[str, Any]]) -> float:
    return round(sum(d["uptime"] for d in days) / len(days), 5) if days else 1.0


def _public(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "title": incident.title,
        "severity": incident.severity,
        "state": incident.state,
        "opened_at": incident.opened_at,
        "resolved_at": incident.resolved_at,
        "updates": [{"ts": u["ts"], "text": u["text"]} for u in incident.updates],
    }
