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
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
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
from opsledger.monitor.receivers import (
    Receiver,
    agree_count,
    peer_firing,
    record_notified,
    subject_id,
)
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
from opsledger.monitor.silences import silence_body
from opsledger.monitor.slo import SLO_METRICS, SLO_RETENTION, SloTracker, slo_rule_groups
from opsledger.monitor.targets import target_spec
from opsledger.notify.routing import (
    AlertState,
    Escalator,
    Route,
    Router,
    Silence,
    alert_notifications,
    group_notification,
)

__all__ = [
    "INHIBITIONS",
    "MonitorService",
    "Receiver",
    "build_rules",
    "peer_firing",
    "record_notified",
]

log = structlog.get_logger(__name__)

INHIBITIONS: list[tuple[str, frozenset[str], tuple[str, ...]]] = [
    ("ChainHalted", frozenset({"NodeHeadLag", "NodeDown", "RPCLatencyHigh"}), ("chain",)),
]
"""(source alert, target alerts, labels that must be equal): Alertmanager's inhibit_rules."""

_SEVERITY_TO_INCIDENT = {"critical": "SEV2", "warning": "SEV3", "info": "SEV4"}


def build_rules(config: MonitorConfig, *, base: Path | None = None) -> list[Rule]:
    groups: list[Any] = list(DEFAULT_RULES) if config.rules.defaults else []
    for name in config.rules.files:
        path = (base / name) if base and not Path(name).is_absolute() else Path(name)
        groups.extend(parse_rule_file(path.read_text(), str(path)))
    groups.extend(config.rules.groups)
    groups.extend(slo_rule_groups(config.slos))
    return load_rule_groups(
        groups,
        source="monitor.rules",
        overrides=config.rules.overrides,
        disabled=config.rules.disable,
    )


class MonitorService:
    def __init__(
        self,
        config: MonitorConfig,
        *,
        rules: Sequence[Rule],
        recorder: Recorder | None = None,
        receivers: Mapping[str, Receiver] | None = None,
        acknowledged: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.recorder: Recorder = recorder or NullRecorder()
        self.receivers = dict(receivers or {})
        self.router = Router(config.routes)
        self.escalator = Escalator()
        self.acknowledged = acknowledged or (lambda incident: False)
        self.peers: dict[str, set[str]] = {}  # fingerprint -> other vantages firing it
        self._awaiting: dict[str, tuple[AlertTransition, str, str, AlertState]] = {}
        self._agreed: set[str] = set()
        self.clock = clock
        self.store = SeriesStore()
        describe_metrics(self.store)
        for name, (_, help_text) in SLO_METRICS.items():
            self.store.describe(name, "counter", help_text, retention=SLO_RETENTION)
        self.slos = SloTracker(config.slos, vantage=config.vantage)
        self.chains = ChainView()
        self.evaluator = AlertEvaluator(rules)
        self.incidents: dict[str, str] = {}  # alert fingerprint -> incident id
        self.external: dict[str, Alert] = {}  # from Alertmanager, by fingerprint
        self.history: list[dict[str, Any]] = []  # recent transitions, for the API
        self.last_results: dict[str, dict[str, Any]] = {}
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}

    # -- the loops --
    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            for target in self.config.targets:
                self._probes[target.name] = asyncio.create_task(self._probe_loop(target, session))
            evaluation = asyncio.create_task(self._evaluation_loop())
            try:
                await self._stop.wait()
            finally:
                tasks = [*self._probes.values(), evaluation]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._probes.clear()
                self._session = None
                self.report_slos(final=True)

    # -- targets managed at runtime (the API); see ``monitor.targets`` --
    def add_target(self, target: Target, *, by: str = "", record: bool = True) -> None:
        """Probe ``target`` from now on (replacing one of the same name)."""
        self.remove_target(target.name, record=False)
        self.config = replace(self.config, targets=(*self.config.targets, target))
        if self._session is not None:
            self._probes[target.name] = asyncio.get_running_loop().create_task(
                self._probe_loop(target, self._session)
            )
        if record:
            self._config_changed("target_added", target.name, by, spec=target_spec(target))

    def remove_target(self, name: str, *, by: str = "", record: bool = True) -> bool:
        if all(t.name != name for t in self.config.targets):
            return False
        self.config = replace(
            self.config, targets=tuple(t for t in self.config.targets if t.name != name)
        )
        task = self._probes.pop(name, None)
        if task is not None:
            task.cancel()
        self.last_results.pop(name, None)
        if record:
            self._config_changed("target_removed", name, by)
        return True

    def _config_changed(
        self, action: str, name: str, by: str, spec: Mapping[str, Any] | None = None
    ) -> None:
        body: dict[str, Any] = {"action": action, "target": name, "vantage": self.config.vantage}
        if spec is not None:
            body["spec"] = dict(spec)
        if by:
            body["by"] = by
        self.recorder.record(
            "monitor.config_changed", Subject("monitor", self.config.vantage), body
        )

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
        self.count_slos(target, result.up, result.values.get("latency", result.duration), at)
        self.last_results[target.name] = {
            "up": result.up,
            "at": at,
            "error": result.error,
            "duration": result.duration,
        }

    async def _evaluation_loop(self) -> None:
        while not self._stop.is_set():
            self.evaluate_once()
            self.report_slos()
            await self._sleep(self.config.evaluation_interval)

    # -- SLOs --
    def count_slos(self, target: Target, up: bool, latency: float, at: float) -> None:
        """One probe of ``target`` counted by every SLO on it (latency in seconds)."""
        for slo in self.slos.matching(target.name, target.component):
            good = self.slos.is_good(slo, up, latency * 1000.0)
            labels = {"slo": slo.name}
            self.store.inc("opsledger_monitor_slo_events_total", labels, at)
            self.store.inc("opsledger_monitor_slo_good_total", labels, at, 1.0 if good else 0.0)
            self.slos.observe(slo, good, latency * 1000.0, at)

    def report_slos(self, *, final: bool = False) -> int:
        """Record ``slo.reported`` for every SLO window that closed (all open ones when
        ``final``): the evidence the ``sla`` contract reads."""
        reports = self.slos.due(self.clock(), final=final)
        for slo, body in reports:
            self.recorder.record("slo.reported", Subject("service", slo.service), body)
        return len(reports)

    def evaluate_once(self) -> list[AlertTransition]:
        transitions = self.evaluator.evaluate(self.store, self.clock())
        for transition in transitions:
            self.handle(transition)
        self.dispatch()
        return transitions

    # -- notifications: routing, grouping, silences, escalation --
    def dispatch(self) -> int:
        """Send what the router and the escalator say is due now; returns how many
        notifications were queued."""
        now = self.clock()
        sent = 0
        for due in self.router.flush(now):
            for name in due.route.receivers:
                receiver = self.receivers.get(name)
                if receiver is None:
                    continue
                notes = (
                    alert_notifications(due) if receiver.per_alert else [group_notification(due)]
                )
                for note in notes:
                    receiver.notifier.notify(note)
                    sent += 1
        for incident, route, note in self.escalator.due(now, self.acknowledged):
            self.recorder.record(
                "incident.escalated",
                Subject("incident", incident),
                {
                    "id": incident,
                    "to": list(route.escalate_to),
                    "after_seconds": route.escalate_after or 0.0,
                },
            )
            for name in route.escalate_to:
                receiver = self.receivers.get(name)
                if receiver is not None:
                    receiver.notifier.notify(note)
                    sent += 1
        return sent

    def add_silence(self, silence: Silence, *, record: bool = True) -> None:
        """Mute matching alerts now; ``record`` puts it on the ledger (``monitor.silence``)."""
        self.router.silences[silence.id] = silence
        if record:
            self.recorder.record(
                "monitor.silence", Subject("silence", silence.id), silence_body(silence)
            )

    def expire_silence(self, silence_id: str, *, by: str = "") -> bool:
        silence = self.router.silences.get(silence_id)
        now = self.clock()
        if silence is None or silence.ends_at <= now:
            return False
        self.router.silences[silence_id] = replace(silence, ends_at=now)
        self.recorder.record(
            "monitor.silence_expired",
            Subject("silence", silence_id),
            {"id": silence_id, **({"by": by} if by else {})},
        )
        return True

    def sync_silences(self, silences: Mapping[str, Silence]) -> None:
        """Silences read from the ledger (made by the CLI or another monitor) win over
        what this process knows, so an expiry recorded elsewhere takes effect here."""
        self.router.silences.update(silences)

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
        subject = Subject("alert", subject_id(alert.fingerprint))
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
        state = AlertState(alert.fingerprint, labels, annotations, transition.kind, transition.at)
        if agree_count(labels) > 1:
            self._agreement(transition, severity, summary, state)
            return
        self._act(transition, severity, summary, state)

    def _act(
        self, transition: AlertTransition, severity: str, summary: str, state: AlertState
    ) -> None:
        routes = self.router.add(state)
        self._incident(transition, severity, summary, state, routes)

    # -- several vantage points: an alert labelled ``agree: N`` needs N of them --
    def _agreement(
        self, transition: AlertTransition, severity: str, summary: str, state: AlertState
    ) -> None:
        key = state.fingerprint
        if transition.kind == "firing":
            self._awaiting[key] = (transition, severity, summary, state)
            self._check_agreement(key)
            return
        self._awaiting.pop(key, None)
        if key in self._agreed:  # it was announced: announce the resolution too
            self._agreed.discard(key)
            self._act(transition, severity, summary, state)

    def _check_agreement(self, key: str) -> None:
        pending = self._awaiting.get(key)
        if pending is None or key in self._agreed:
            return
        voters = self.peers.get(key, set()) | {self.config.vantage}
        needed = agree_count(pending[3].labels)
        # one vantage acts for all (the first by name), so agreeing monitors page once
        if len(voters) >= needed and self.config.vantage == min(voters):
            self._agreed.add(key)
            transition, severity, summary, state = pending
            self._act(transition, severity, summary, state)

    def sync_peers(self, firing: Mapping[str, set[str]]) -> None:
        """What other vantages report firing (fingerprint -> vantage names), read from
        the ledger's ``alert.fired``/``alert.resolved``; alerts waiting for agreement are
        re-checked."""
        self.peers = {k: {v for v in vs if v != self.config.vantage} for k, vs in firing.items()}
        for key in list(self._awaiting):
            self._check_agreement(key)

    def _incident(
        self,
        transition: AlertTransition,
        severity: str,
        summary: str,
        state: AlertState,
        routes: Sequence[Route],
    ) -> None:
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
            self.escalator.watch(incident, state, routes, transition.at)
        elif transition.kind == "resolved" and key in self.incidents:
            incident = self.incidents.pop(key)
            self.escalator.forget(incident)
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
        self.dispatch()
        return count


def format_ts_seconds(at: float) -> str:
    return format_ts(datetime.fromtimestamp(at, UTC))


def _finite(value: float) -> bool:
    return math.isfinite(value)
