"""DORA metrics computed from ledger transactions: pure, no I/O, time passed in.

The inputs are listing rows (``{"tx_id", "transaction": {type, ts, body, ...}}``) of the
types in ``DORA_TYPES`` and a ``DoraQuery`` (now, window, service, environment); the output
is one report dict. docs/dora.md states every definition; in short, over the window
``[now - window, now)`` and for the production environment:

- **Deployments** are ``deploy.finished`` with status ``success`` or ``rolled_back`` (the
  change reached the target). ``failure`` (the deploy machinery itself failed) is counted
  apart in ``totals.deploys_errored``. Deployment frequency counts the successful ones.
- **Lead time** per commit: from its commit time (``code.pushed`` ``commits[].time``) to the
  first successful production ``deploy.finished`` that lists it in ``commits``; median.
- **Failed deployment**: one rolled back (status, or a ``deploy.rolled_back`` naming it)
  or named by an incident: ``incident.opened.body.deploy`` or ``incident.attributed``
  ``{id, deploy, decision: confirmed}`` (``rejected`` removes the link; the last word
  wins). Attribution uses these explicit links only, never "the last deploy before the
  incident". A link may name the deploy's ``deploy.started`` or
  ``deploy.finished`` tx id.
- **Time to restore**: incident opened → its ``incident.resolved`` (same ``id``); median.
- **Failed deployment recovery time**: failed deploy's ``deploy.started`` → its rollback,
  or else the later of its linked incidents' resolution or the next successful deploy of
  the same service and environment, whichever comes first; median.
- **Deployment rework rate**: successful deployments made to fix an incident
  (``deploy.started.body.fixes`` or ``incident.resolved.body.deploy``) / successful ones.
- **Defect escape rate**: of the artifact digests found defective in the window, the
  share found in production (a failed production deployment), against those caught
  before it (a failing ``test.finished``, or a failed deploy in another environment).

Tiers follow the 2023 Accelerate State of DevOps report's performance levels (``TIERS``).
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DORA_TYPES",
    "TIERS",
    "DoraQuery",
    "compute_dora",
    "parse_window",
    "tier",
]

DORA_TYPES = (
    "deploy.started",
    "deploy.finished",
    "deploy.rolled_back",
    "code.pushed",
    "incident.opened",
    "incident.attributed",
    "incident.resolved",
    "test.finished",
)

# (metric, higher_is_better, [(bound, tier), ...]) checked in order; the last tier catches
# the rest. Source: Google Cloud, "Accelerate State of DevOps Report 2023", table of
# software delivery performance levels: elite = on demand / < 1 day / 5% / < 1 hour;
# high = daily to weekly / 1 day to 1 week / 10% / < 1 day; medium = weekly to monthly /
# 1 week to 1 month / 15% / 1 day to 1 week; low = below those.
TIERS: dict[str, tuple[bool, tuple[tuple[float, str], ...]]] = {
    "deployment_frequency": (True, ((1.0, "elite"), (1 / 7, "high"), (1 / 30, "medium"))),
    "lead_time": (False, ((24.0, "elite"), (168.0, "high"), (720.0, "medium"))),
    "change_failure_rate": (False, ((0.05, "elite"), (0.10, "high"), (0.15, "medium"))),
    "time_to_restore": (False, ((1.0, "elite"), (24.0, "high"), (168.0, "medium"))),
    "failed_deployment_recovery_time": (
        False,
        ((1.0, "elite"), (24.0, "high"), (168.0, "medium")),
    ),
}
_WINDOW_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW = re.compile(r"([0-9]{1,6})([hdw])")


def tier(metric: str, value: float | None) -> str | None:
    """The DORA tier of ``value`` (None without data). Frequency: at least the bound;
    durations: strictly below it; rates: at most it."""
    if value is None:
        return None
    higher_better, bounds = TIERS[metric]
    for bound, name in bounds:
        if higher_better and value >= bound:
            return name
        if not higher_better and metric.endswith("rate") and value <= bound:
            return name
        if not higher_better and not metric.endswith("rate") and value < bound:
            return name
    return "low"


def parse_window(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``2w`` -> timedelta."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"window {text!r} must look like 30d, 12h or 2w")
    return dt.timedelta(seconds=int(match.group(1)) * _WINDOW_UNITS[match.group(2)])


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _hours(delta: dt.timedelta) -> float:
    return delta.total_seconds() / 3600.0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _failing_test(body: Mapping[str, Any]) -> bool:
    try:
        failed = int(body.get("failed") or 0)
    except (TypeError, ValueError):
        failed = 0
    return body.get("status") == "failure" or failed > 0


@dataclass(frozen=True, slots=True)
class DoraQuery:
    now: dt.datetime
    window: dt.timedelta = dt.timedelta(days=30)
    service: str | None = None
    environment: str = "production"

    @property
    def start(self) -> dt.datetime:
        return self.now - self.window


@dataclass
class _Deploy:
    key: str  # the deploy.started tx id (or the finished one when no start is linked)
    service: str
    environment: str
    version: str
    digest: str
    status: str
    started: dt.datetime | None
    finished: dt.datetime
    finished_id: str
    commits: list[str]
    fixes: str | None = None
    rolled_back_at: dt.datetime | None = None
    incidents: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return (
            self.status == "rolled_back" or self.rolled_back_at is not None or bool(self.incidents)
        )


@dataclass
class _Incident:
    id: str
    opened: dt.datetime
    body: Mapping[str, Any]
    resolved: dt.datetime | None = None
    resolved_by_deploy: str | None = None
    deploys: list[str] = field(default_factory=list)


class _History:
    """The rows sorted into deploys, incidents, pushes and tests, links resolved."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], now: dt.datetime) -> None:
        self.deploys: dict[str, _Deploy] = {}
        self.alias: dict[str, str] = {}  # any deploy tx id -> deploy key
        self.incidents: dict[str, _Incident] = {}
        self.commit_time: dict[str, dt.datetime] = {}
        self.failed_tests: list[tuple[dt.datetime, str]] = []
        started: dict[str, tuple[dt.datetime, Mapping[str, Any]]] = {}
        rollbacks: list[tuple[dt.datetime, str]] = []
        attributions: list[tuple[str, str, bool]] = []  # (incident, deploy, confirmed)
        resolutions: list[tuple[dt.datetime, Mapping[str, Any]]] = []
        ordered = sorted(rows, key=lambda r: (r["transaction"]["ts"], r.get("leaf_index", 0)))
        for row in ordered:
            tx = row["transaction"]
            when, body, kind = _ts(tx["ts"]), tx.get("body") or {}, tx["type"]
            if when >= now:
                continue
            if kind == "deploy.started":
                started[row["tx_id"]] = (when, body)
            elif kind == "deploy.finished":
                self._finished(row["tx_id"], when, body, started)
            elif kind == "deploy.rolled_back" and body.get("deploy"):
                rollbacks.append((when, str(body["deploy"])))
            elif kind == "code.pushed":
                for commit in body.get("commits") or []:
                    try:
                        time = _ts(str(commit["time"]))
                    except (KeyError, ValueError):
                        continue
                    known = self.commit_time.get(str(commit["id"]))
                    if known is None or time < known:
                        self.commit_time[str(commit["id"])] = time
            elif kind == "incident.opened" and body.get("id"):
                opened = _Incident(str(body["id"]), when, body)
                self.incidents.setdefault(opened.id, opened)
                if body.get("deploy"):
                    attributions.append((opened.id, str(body["deploy"]), True))
            elif kind == "incident.attributed" and body.get("id") and body.get("deploy"):
                confirmed = body.get("decision", "confirmed") == "confirmed"
                attributions.append((str(body["id"]), str(body["deploy"]), confirmed))
            elif kind == "incident.resolved" and body.get("id"):
                resolutions.append((when, body))
            elif kind == "test.finished" and body.get("digest") and _failing_test(body):
                self.failed_tests.append((when, str(body["digest"])))
        for when, ref in rollbacks:
            deploy = self.deploy(ref)
            if deploy is not None and deploy.rolled_back_at is None:
                deploy.rolled_back_at = when
        for incident_id, ref, confirmed in attributions:  # in ledger order: the last word wins
            incident = self.incidents.get(incident_id)
            deploy = self.deploy(ref)
            if incident is None or deploy is None:
                continue
            if confirmed and deploy.key not in incident.deploys:
                incident.deploys.append(deploy.key)
                deploy.incidents.append(incident_id)
            elif not confirmed and deploy.key in incident.deploys:
                incident.deploys.remove(deploy.key)
                deploy.incidents.remove(incident_id)
        for when, body in resolutions:
            found = self.incidents.get(str(body["id"]))
            if found is not None and found.resolved is None and when >= found.opened:
                found.resolved = when
                fixed_by = self.deploy(str(body["deploy"])) if body.get("deploy") else None
                found.resolved_by_deploy = fixed_by.key if fixed_by else None

    def _finished(
        self,
        tx_id: str,
        when: dt.datetime,
        body: Mapping[str, Any],
        started: Mapping[str, tuple[dt.datetime, Mapping[str, Any]]],
    ) -> None:
        key = str(body.get("deploy") or tx_id)
        start = started.get(key)
        deploy = _Deploy(
            key=key,
            service=str(body.get("service", "")),
            environment=str(body.get("environment", "")),
            version=str(body.get("version", "")),
            digest=str(body.get("digest", "")),
            status=str(body.get("status", "")),
            started=start[0] if start else None,
            finished=when,
            finished_id=tx_id,
            commits=[str(c) for c in body.get("commits") or []],
            fixes=str(start[1]["fixes"]) if start and start[1].get("fixes") else None,
        )
        self.deploys[key] = deploy
        self.alias[key] = key
        self.alias[tx_id] = key

    def deploy(self, ref: str) -> _Deploy | None:
        key = self.alias.get(ref)
        return self.deploys.get(key) if key else None


def compute_dora(rows: Iterable[Mapping[str, Any]], query: DoraQuery) -> dict[str, Any]:
    """The DORA report for ``query`` over ``rows`` (see the module docstring)."""
    history = _History(rows, query.now)
    start, now = query.start, query.now
    days = query.window.total_seconds() / 86400.0

    def ours(d: _Deploy, *, production: bool = True) -> bool:
        if query.service is not None and d.service != query.service:
            return False
        return (d.environment == query.environment) == production

    prod_all = sorted(
        (d for d in history.deploys.values() if ours(d) and d.status != "failure"),
        key=lambda d: d.finished,
    )
    in_window = [d for d in prod_all if start <= d.finished < now]
    successes = [d for d in in_window if d.status == "success"]
    errored = sum(
        1
        for d in history.deploys.values()
        if ours(d) and d.status == "failure" and start <= d.finished < now
    )
    failed = [d for d in in_window if d.failed]

    # lead time: each commit at the first successful production deploy that shipped it
    shipped: dict[str, _Deploy] = {}
    for d in prod_all:
        if d.status == "success":
            for commit in d.commits:
                shipped.setdefault(commit, d)
    lead_times: list[float] = []
    without_time = 0
    for commit, d in shipped.items():
        if not start <= d.finished < now:
            continue
        pushed = history.commit_time.get(commit)
        if pushed is None:
            without_time += 1
            continue
        lead_times.append(max(0.0, _hours(d.finished - pushed)))

    # incidents of this service (by body or by linked deploy) in this environment
    def incident_counts(incident: _Incident) -> bool:
        linked = [history.deploys[k] for k in incident.deploys]
        service = incident.body.get("service")
        if (
            query.service is not None
            and service != query.service
            and not any(d.service == query.service for d in linked)
        ):
            return False
        environment = incident.body.get("environment")
        if environment is not None:
            return bool(environment == query.environment)
        return not linked or any(d.environment == query.environment for d in linked)

    incidents = [
        i for i in history.incidents.values() if start <= i.opened < now and incident_counts(i)
    ]
    restore = [_hours(i.resolved - i.opened) for i in incidents if i.resolved is not None]

    # failed deployment recovery time
    recovery: list[float] = []
    for d in failed:
        begin = d.started or d.finished
        end: dt.datetime | None = d.rolled_back_at
        if end is None and d.status == "rolled_back":
            end = d.finished
        if end is None:
            linked = [history.incidents[i] for i in d.incidents]
            candidates: list[dt.datetime] = []
            if linked and all(i.resolved is not None for i in linked):
                candidates.append(max(i.resolved for i in linked if i.resolved is not None))
            later = [
                x.finished
                for x in prod_all
                if x.status == "success"
                and x.service == d.service
                and x.finished > d.finished
                and not x.failed
            ]
            if later:
                candidates.append(min(later))
            end = min(candidates) if candidates else None
        if end is not None:
            recovery.append(max(0.0, _hours(end - begin)))

    # rework: successful deploys made to fix an incident
    fixing = {i.resolved_by_deploy for i in history.incidents.values() if i.resolved_by_deploy}
    rework = [d for d in successes if d.fixes or d.key in fixing]

    # defect escape rate over artifact digests
    escaped = {d.digest for d in failed}
    caught = {digest for when, digest in history.failed_tests if start <= when < now}
    caught |= {
        d.digest
        for d in history.deploys.values()
        if ours(d, production=False) and d.failed and start <= d.finished < now
    }
    defective = escaped | caught

    frequency = len(successes) / days if days else None
    lead = _median(lead_times)
    cfr = _ratio(len(failed), len(in_window))
    ttr = _median(restore)
    fdrt = _median(recovery)
    return {
        "service": query.service,
        "environment": query.environment,
        "window": {
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days": days,
        },
        "deployment_frequency_per_day": frequency,
        "lead_time_hours": lead,
        "change_failure_rate": cfr,
        "time_to_restore_hours": ttr,
        "defect_escape_rate": _ratio(len(escaped), len(defective)),
        "failed_deployment_recovery_time_hours": fdrt,
        "deployment_rework_rate": _ratio(len(rework), len(successes)),
        "tiers": {
            "deployment_frequency": tier("deployment_frequency", frequency),
            "lead_time": tier("lead_time", lead),
            "change_failure_rate": tier("change_failure_rate", cfr),
            "time_to_restore": tier("time_to_restore", ttr),
            "failed_deployment_recovery_time": tier("failed_deployment_recovery_time", fdrt),
        },
        "totals": {
            "deployments": len(in_window),
            "successful_deployments": len(successes),
            "failed_deployments": len(failed),
            "rolled_back_deployments": sum(
                1 for d in in_window if d.status == "rolled_back" or d.rolled_back_at
            ),
            "deployments_with_incidents": sum(1 for d in in_window if d.incidents),
            "deploys_errored": errored,
            "commits_shipped": len(lead_times) + without_time,
            "commits_with_lead_time": len(lead_times),
            "commits_without_push": without_time,
            "incidents": len(incidents),
            "incidents_resolved": len(restore),
            "failed_deployments_recovered": len(recovery),
            "rework_deployments": len(rework),
            "defective_changes": len(defective),
            "escaped_defects": len(escaped),
        },
        "failures": [
            {
                "deploy": d.key,
                "service": d.service,
                "version": d.version,
                "digest": d.digest,
                "rolled_back": d.status == "rolled_back" or d.rolled_back_at is not None,
                "incidents": list(d.incidents),
            }
            for d in failed
        ],
    }
