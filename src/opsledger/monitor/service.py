"""The monitor loop: probe every target on its interval, evaluate rules, act on alerts.

When an alert starts firing the monitor (1) records ``alert.fired`` on the ledger, (2)
notifies the routes whose ``match`` labels it carries, unless an inhibiting alert is
firing (a halted chain silences the lag and down alerts of its own nodes: one page, not
twenty), and (3) opens an incident when its severity is the configured one (critical by
default). Resolution records ``alert.resolved``, notifies, and adds an update to the
incident; people resolve incidents, not the monitor. Alerts from a real Alertmanager
(its webhook) go through the same path, so the ledger holds every alert's history.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from opsledger.client.base import NullRecorder, Recorder
from opsledger.core import Subject, format_ts
from opsledger.monitor.config import MonitorConfig, Target
from opsledger.monitor.incidents import incident_id_for
from opsledger.monitor.probes import ChainView, describe_metrics, probe, record_result
from opsledger.monitor.rules import (
    DEFAULT_RULES,
    Alert,
    AlertEvaluator,
    AlertTransition,
    Rule,
    load_rule_groups,
    parse_rule_file,
)
from opsledger.monitor.series import SeriesStore
from opsledger.notify import Notification, Notifier

__all__ = ["INHIBITIONS", "MonitorService", "NotifyRoute", "build_rules"]

log = structlog.get_logger(__name__)

INHIBITIONS: list[tuple[str, frozenset[str], tuple[str, ...]]] = [
    ("ChainHalted", frozenset({"NodeHeadLag", "NodeDown", "RPCLatencyHigh"}), ("chain",)),
]
"""(source alert, target alerts, labels that must be equal): Alertmanager's inhibit_rules."""

_SEVERITY_TO_NOTIFY = {"critical": "critical", "warning": "warning", "info": "info"}
_SEVERITY_TO_INCIDENT = {"critical": "SEV2", "warning": "SEV3", "info": "SEV4"}


def build_rules(config: MonitorConfig, *, base: Path | None = None) -> list[Rule]:
    groups: list[Any] = list(DEFAULT_RULES) if config.rules.defaults else []
    for name in config.rules.files:
        path = (base / name) if base and not Path(name).is_absolute() else Path(name)
        groups.extend(parse_rule_file(path.read_text(), str(path)))
    groups.extend(config.rules.groups)
    return load_rule_groups(
        groups,
        source="monitor.rules",
        overrides=config.rules.overrides,
        disabled=config.rules.disable,
    )


@dataclass
class NotifyRoute:
    """A notifier and the labels an alert must carry to reach it."""

    notifier: Notifier
    match: Mapping[str, str] = field(default_factory=dict)

    def wants(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match.items())


def _subject_id(fingerprint: str) -> str:
    return (
        fingerprint if len(fingerprint) <= 200 else hashlib.sha256(fingerprint.encode()).hexdigest()
    )


class MonitorService:
    def __init__(
        self,
        config: MonitorConfig,
        *,
        rules: Sequence[Rule],
        recorder: Recorder | None = None,
        routes: Sequence[NotifyRoute] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.recorder: Recorder = recorder or NullRecorder()
        self.routes = list(routes)
        self.clock = clock
        self.store = SeriesStore()
        describe_metrics(self.store)
        self.chains = ChainView()
        self.evaluator = AlertEvaluator(rules)
        self.incidents: dict[str, str] = {}  # alert fingerprint -> incident id
        self.external: dict[str, Alert] = {}  # from Alertmanager, by fingerprint
        self.history: list[dict[str, Any]] = []  # recent transitions, for the API
        self.last_results: dict[str, dict[str, Any]] = {}
        self._stop = asyncio.Event()

    # -- the loops --
    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [asyncio.create_task(self._probe_loop(t, session)) for t in self.config.targets]
            tasks.append(asyncio.create_task(self._evaluation_loop()))
            try:
                await self._stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return

    async def _probe_loop(self, target: Target, session: aiohttp.ClientSession) -> None:
        # spread the first probes over the interval so 1,000 targets do not start at once
        await self._sleep(random.random() * min(target.interval, 1.0) * self.config.jitter)  # noqa: S311
        while not self._stop.is_set():
            await self.probe_once(target, session)
            spread = target.interval * self.config.jitter
            await self._sleep(target.interval + random.uniform(-spread, spread))  # noqa: S311

    async def probe_once(self, target: Target, session: aiohttp.ClientSession) -> None:
        result = await probe(target, session)
        at = self.clock()
        record_result(self.store, self.chains, result, at)
        self.last_results[target.name] = {
            "up": result.up,
            "at": at,
            "error": result.error,
            "duration": result.duration,
        }

    async def _evaluation_loop(self) -> None:
        while not self._stop.is_set():
            self.evaluate_once()
            await self._sleep(self.config.evaluation_interval)

    def evaluate_once(self) -> list[AlertTransition]:
        transitions = self.evaluator.evaluate(self.store, self.clock())
        for transition in transitions:
            self.handle(transition)
        return transitions

    # -- acting on alerts --
    def firing(self) -> list[Alert]:
        return self.evaluator.firing() + list(self.external.values())

    def inhibited(self, alert: Alert) -> bool:
        labels = dict(alert.labels)
        for source, targets, equal in INHIBITIONS:
            if labels.get("alertname") not in targets:
                continue
            for other in self.firing():
                other_labels = dict(other.labels)
                if other_labels.get("alertname") == source and all(
                    other_labels.get(k) == labels.get(k) for k in equal
                ):
                    return True
        return False

    def handle(self, transition: AlertTransition) -> None:
        alert = transition.alert
        labels = dict(alert.labels)
        severity = labels.get("severity", "warning")
        annotations = alert.annotations()
        summary = annotations.get("summary") or alert.rule.alert
        subject = Subject("alert", _subject_id(alert.fingerprint))
        inhibited = self.inhibited(alert)
        entry = {
            "kind": transition.kind,
            "alert": alert.rule.alert,
            "fingerprint": alert.fingerprint,
            "severity": severity,
            "labels": labels,
            "summary": summary,
            "at": format_ts_seconds(transition.at),
            "inhibited": inhibited,
        }
        self.history = [*self.history[-199:], entry]
        if transition.kind == "firing":
            body: dict[str, Any] = {
                "alert": alert.rule.alert,
                "severity": severity,
                "summary": summary,
                "fingerprint": alert.fingerprint,
                "labels": labels,
                "annotations": annotations,
                "vantage": self.config.vantage,
            }
            if _finite(alert.value):
                body["value"] = alert.value
            self.recorder.record("alert.fired", subject, body)
        else:
            self.recorder.record(
                "alert.resolved",
                subject,
                {
                    "alert": alert.rule.alert,
                    "fingerprint": alert.fingerprint,
                    "vantage": self.config.vantage,
                },
            )
        if inhibited:
            log.info("alert inhibited", alert=alert.fingerprint)
            return
        self._notify(transition, severity, summary, labels, annotations)
        self._incident(transition, severity, summary)

    def _notify(
        self,
        transition: AlertTransition,
        severity: str,
        summary: str,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
    ) -> None:
        resolved = transition.kind == "resolved"
        notification = Notification(
            event=f"alert.{transition.kind}",
            title=("[RESOLVED] " if resolved else "") + summary,
            text=annotations.get("description", ""),
            severity="info" if resolved else _SEVERITY_TO_NOTIFY.get(severity, "warning"),  # type: ignore[arg-type]
            fields=dict(labels),
            links={"runbook": annotations["runbook_url"]} if "runbook_url" in annotations else {},
        )
        for route in self.routes:
            if route.wants(labels):
                route.notifier.notify(notification)

    def _incident(self, transition: AlertTransition, severity: str, summary: str) -> None:
        alert = transition.alert
        if severity != self.config.incident_severity:
            return
        key = alert.fingerprint
        if transition.kind == "firing" and key not in self.incidents:
            opened_at = format_ts_seconds(transition.at)
            incident = incident_id_for(key, opened_at)
            self.incidents[key] = incident
            self.recorder.record(
                "incident.opened",
                Subject("incident", incident),
                {
                    "id": incident,
                    "severity": _SEVERITY_TO_INCIDENT.get(severity, "SEV3"),
                    "title": summary,
                    "alert": alert.rule.alert,
                    "fingerprint": key,
                },
            )
        elif transition.kind == "resolved" and key in self.incidents:
            incident = self.incidents.pop(key)
            self.recorder.record(
                "incident.updated",
                Subject("incident", incident),
                {"id": incident, "text": f"Alert {alert.rule.alert} resolved: {summary}"},
            )

    def alert_rows(self) -> list[dict[str, Any]]:
        """This process's alert history shaped like ledger rows (status page without a
        ledger: uptime since the monitor started)."""
        return [
            {
                "transaction": {
                    "type": f"alert.{'fired' if e['kind'] == 'firing' else 'resolved'}",
                    "ts": e["at"],
                    "body": {
                        "fingerprint": e["fingerprint"],
                        "severity": e["severity"],
                        "labels": e["labels"],
                    },
                }
            }
            for e in self.history
        ]

    # -- Alertmanager's webhook --
    def ingest_alertmanager(self, payload: Mapping[str, Any]) -> int:
        """Alerts from a real Alertmanager (webhook format version 4)."""
        from opsledger.monitor.alertmanager import transitions_from_webhook

        count = 0
        for transition in transitions_from_webhook(payload, self.external, self.clock()):
            self.handle(transition)
            count += 1
        return count


def format_ts_seconds(at: float) -> str:
    return format_ts(datetime.fromtimestamp(at, UTC))


def _finite(value: float) -> bool:
    return math.isfinite(value)
