"""Alert routing as Alertmanager does it: routes, groups, timers, silences, escalation.

Alertmanager's semantics, kept because on-call people already know them:

- a *route* matches an alert's labels (``=``, ``!=``, ``=~``, ``!~`` matchers); routes
  are tried in order and the first match wins unless it says ``continue``;
- alerts of a route are *grouped* by the ``group_by`` labels (``["..."]``: every label,
  one alert per group). A new group waits ``group_wait`` so alerts that start together
  go out together; later changes go out at most every ``group_interval``; a group that
  still fires and has not changed is sent again after ``repeat_interval``;
- a notification goes out only when the group's content changed (an alert started or
  resolved) or the repeat is due: the same alert reported twice (by Alertmanager's
  retries, or by two vantage points) is *de-duplicated*;
- a *silence* (matchers, a start, an end, an author and a comment) mutes the alerts it
  matches while active; a resolved alert is only announced if its firing was;
- *escalation*: an incident opened by a routed alert and not acknowledged within the
  route's ``escalate_after`` is announced to ``escalate_to`` once.

Everything here is pure and driven by the caller's clock (``add`` then ``flush(now)``),
which keeps it deterministic to test; the monitor calls ``flush`` on every evaluation.
Written by hand: Alertmanager is a Go program, and no Python library implements this.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opsledger.core import ConfigError, InvalidInput
from opsledger.notify.delivery import Notification, Severity

__all__ = [
    "AlertState",
    "Dispatch",
    "Escalator",
    "Matcher",
    "Route",
    "Router",
    "Silence",
    "alert_notifications",
    "group_notification",
    "parse_matcher",
    "parse_routes",
]

Op = Literal["=", "!=", "=~", "!~"]
_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SEVERITY: dict[str, Severity] = {"critical": "critical", "warning": "warning", "info": "info"}


@dataclass(frozen=True)
class Matcher:
    name: str
    value: str
    op: Op = "="

    def __post_init__(self) -> None:
        if not _LABEL_NAME.match(self.name):
            raise InvalidInput(f"bad label name {self.name!r}", field="matchers")
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise InvalidInput(f"bad regular expression {self.value!r}: {exc}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        # anchored, as in Alertmanager
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op, "value": self.value}


def parse_matcher(text: str) -> Matcher:
    """``name=value``, ``name!=value``, ``name=~regex``, ``name!~regex`` (quotes optional)."""
    found = _MATCHER.match(text)
    if not found:
        raise InvalidInput(
            f"matcher {text!r}: use name=value, name!=value, name=~regex or name!~regex",
            field="matchers",
        )
    name, op, value = found.groups()
    return Matcher(name, value, op)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Route:
    name: str
    receivers: tuple[str, ...]
    matchers: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] | None = ("alertname",)  # None: every label ("...")
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    continue_matching: bool = False
    escalate_after: float | None = None
    escalate_to: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.group_by is None:
            return dict(labels)
        return {k: labels[k] for k in self.group_by if k in labels}


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    author: str
    comment: str

    def active(self, at: float) -> bool:
        return self.starts_at <= at < self.ends_at

    def mutes(self, labels: Mapping[str, str], at: float) -> bool:
        return self.active(at) and all(m.matches(labels) for m in self.matchers)


@dataclass
class AlertState:
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    status: Literal["firing", "resolved"]
    at: float


@dataclass(frozen=True)
class Dispatch:
    """One notification due for a group, to every receiver of its route."""

    route: Route
    group_key: str
    group_labels: Mapping[str, str]
    alerts: tuple[AlertState, ...]
    repeat: bool = False

    @property
    def status(self) -> str:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"


@dataclass
class _Group:
    route: Route
    key: str
    labels: dict[str, str]
    created: float
    alerts: dict[str, AlertState] = field(default_factory=dict)
    sent: frozenset[tuple[str, str]] | None = None
    last_flush: float | None = None
    notified: set[str] = field(default_factory=set)  # firing fingerprints announced


class Router:
    """Groups routed alerts and says which notifications are due (module docstring)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self.silences: dict[str, Silence] = {}
        self._groups: dict[str, _Group] = {}

    def routes_for(self, labels: Mapping[str, str]) -> list[Route]:
        picked = []
        for route in self.routes:
            if route.matches(labels):
                picked.append(route)
                if not route.continue_matching:
                    break
        return picked

    def silenced_by(self, labels: Mapping[str, str], at: float) -> Silence | None:
        return next((s for s in self.silences.values() if s.mutes(labels, at)), None)

    def add(self, alert: AlertState) -> list[Route]:
        """Route an alert's new state; returns the routes it went to."""
        routes = self.routes_for(alert.labels)
        for route in routes:
            group_labels = route.group_labels(alert.labels)
            key = route.name + "/" + ",".join(f"{k}={v}" for k, v in sorted(group_labels.items()))
            group = self._groups.get(key)
            if group is None:
                if alert.status == "resolved":
                    continue  # nothing was announced for this group: nothing to resolve
                group = self._groups[key] = _Group(route, key, group_labels, alert.at)
            current = group.alerts.get(alert.fingerprint)
            if current is not None and current.status == alert.status:
                current.annotations = alert.annotations  # a duplicate: no change to announce
                continue
            group.alerts[alert.fingerprint] = alert
        return routes

    def flush(self, now: float) -> list[Dispatch]:
        due: list[Dispatch] = []
        for key in list(self._groups):
            group = self._groups[key]
            dispatch = self._due(group, now)
            if dispatch is not None:
                due.append(dispatch)
                group.last_flush = now
                for alert in dispatch.alerts:
                    if alert.status == "firing":
                        group.notified.add(alert.fingerprint)
            # resolved alerts leave the group once announced (or if never announced)
            for fingerprint, alert in list(group.alerts.items()):
                announced = dispatch is not None and alert in dispatch.alerts
                if alert.status == "resolved" and (announced or fingerprint not in group.notified):
                    del group.alerts[fingerprint]
                    group.notified.discard(fingerprint)
            if dispatch is not None:
                group.sent = self._content(group, now)
            if not group.alerts:
                del self._groups[key]
        return due

    def _visible(self, group: _Group, now: float) -> list[AlertState]:
        visible = []
        for alert in group.alerts.values():
            if alert.status == "resolved" and alert.fingerprint not in group.notified:
                continue
            if alert.status == "firing" and self.silenced_by(alert.labels, now):
                continue
            visible.append(alert)
        return visible

    def _content(self, group: _Group, now: float) -> frozenset[tuple[str, str]]:
        return frozenset((a.fingerprint, a.status) for a in self._visible(group, now))

    def _due(self, group: _Group, now: float) -> Dispatch | None:
        route = group.route
        visible = self._visible(group, now)
        if not visible:
            return None
        content = frozenset((a.fingerprint, a.status) for a in visible)
        firing = any(a.status == "firing" for a in visible)
        repeat = False
        if group.last_flush is None:
            if now < group.created + route.group_wait or not firing:
                return None
        elif content != group.sent:
            if now < group.last_flush + route.group_interval:
                return None
        elif firing and now >= group.last_flush + route.repeat_interval:
            repeat = True
        else:
            return None
        ordered = tuple(sorted(visible, key=lambda a: (a.status, a.fingerprint)))
        return Dispatch(route, group.key, dict(group.labels), ordered, repeat)


# -- notifications --


def _common(alerts: Sequence[AlertState]) -> dict[str, str]:
    first = dict(alerts[0].labels)
    return {k: v for k, v in first.items() if all(a.labels.get(k) == v for a in alerts[1:])}


def _title(alert: AlertState) -> str:
    summary = alert.annotations.get("summary") or alert.labels.get("alertname", "alert")
    return ("[RESOLVED] " if alert.status == "resolved" else "") + summary


def _severity(labels: Mapping[str, str], resolved: bool) -> Severity:
    return "info" if resolved else _SEVERITY.get(labels.get("severity", ""), "warning")


def _links(annotations: Mapping[str, str]) -> dict[str, str]:
    return {"runbook": annotations["runbook_url"]} if "runbook_url" in annotations else {}


def alert_notifications(dispatch: Dispatch) -> list[Notification]:
    """One notification per alert (for PagerDuty: its dedup_key is the fingerprint)."""
    return [
        Notification(
            event=f"alert.{alert.status}",
            title=_title(alert),
            text=alert.annotations.get("description", ""),
            severity=_severity(alert.labels, alert.status == "resolved"),
            fields=dict(alert.labels),
            links=_links(alert.annotations),
            key=alert.fingerprint,
            refs=(alert.fingerprint,),
        )
        for alert in dispatch.alerts
    ]


def group_notification(dispatch: Dispatch) -> Notification:
    """One notification for the group: a single alert reads as itself; several are
    listed, with the labels they share as fields (Alertmanager's ``commonLabels``)."""
    alerts = dispatch.alerts
    if len(alerts) == 1:
        (single,) = alert_notifications(dispatch)
        return single
    firing = [a for a in alerts if a.status == "firing"]
    resolved = [a for a in alerts if a.status == "resolved"]
    common = _common(alerts)
    what = ", ".join(f"{k}={v}" for k, v in sorted(dispatch.group_labels.items()))
    counts = f"FIRING:{len(firing)}" + (f" RESOLVED:{len(resolved)}" if resolved else "")
    lines = [f"• {_title(a)}" for a in alerts]
    links: dict[str, str] = {}
    for alert in alerts:
        links.update(_links(alert.annotations))
    return Notification(
        event=f"alert.{dispatch.status}",
        title=f"[{counts}] {common.get('alertname', 'alerts')}" + (f" ({what})" if what else ""),
        text="\n".join(lines),
        severity=_severity(common, not firing),
        fields=common,
        links=links,
        key=hashlib.sha256(dispatch.group_key.encode()).hexdigest()[:32],
        refs=tuple(a.fingerprint for a in alerts),
    )


# -- escalation --


@dataclass
class _Watch:
    incident: str
    alert: AlertState
    route: Route
    since: float


class Escalator:
    """Incidents opened by routed alerts, until acknowledged, resolved or escalated."""

    def __init__(self) -> None:
        self._watching: dict[str, _Watch] = {}

    def watch(self, incident: str, alert: AlertState, routes: Sequence[Route], at: float) -> None:
        for route in routes:
            if route.escalate_after is not None and route.escalate_to:
                self._watching[incident] = _Watch(incident, alert, route, at)
                return

    def forget(self, incident: str) -> None:
        self._watching.pop(incident, None)

    def due(
        self, now: float, acknowledged: Callable[[str], bool]
    ) -> list[tuple[str, Route, Notification]]:
        """Escalations due now (each incident escalates once)."""
        out = []
        for incident, watch in list(self._watching.items()):
            assert watch.route.escalate_after is not None  # only such routes are watched
            if now < watch.since + watch.route.escalate_after:
                continue
            del self._watching[incident]
            if acknowledged(incident):
                continue
            minutes = watch.route.escalate_after / 60
            alert = watch.alert
            out.append(
                (
                    incident,
                    watch.route,
                    Notification(
                        event="incident.escalated",
                        title=f"[ESCALATED] {incident}: {_title(alert)}",
                        text=f"Nobody acknowledged incident {incident} within {minutes:g} min.",
                        severity="critical",
                        fields={"incident": incident, **alert.labels},
                        links=_links(alert.annotations),
                        key=f"{alert.fingerprint}:escalated",
                        refs=(alert.fingerprint,),
                    ),
                )
            )
        return out


# -- configuration --

_ROUTE_KEYS = {
    "name",
    "match",
    "matchers",
    "receivers",
    "group_by",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "continue",
    "escalate_after",
    "escalate_to",
}


def parse_routes(
    raw: Any,
    receivers: Sequence[str],
    *,
    where: str = "monitor.routes",
    duration: Callable[[Any, str], float],
) -> list[Route]:
    """``monitor.routes``: a list of ``{match: {label: value}, matchers: ["a=~b"],
    receivers: [names], group_by, group_wait, group_interval, repeat_interval, continue,
    escalate_after, escalate_to}``. ``duration`` parses Prometheus durations."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: a list of routes", key=where)
    known = set(receivers)
    routes = []
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: a route is a mapping", key=at)
        extra = sorted(set(entry) - _ROUTE_KEYS)
        if extra:
            raise ConfigError(f"{at}.{extra[0]}: unknown key", key=f"{at}.{extra[0]}")
        names: dict[str, tuple[str, ...]] = {}
        for key in ("receivers", "escalate_to"):
            value = entry.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{at}.{key}: a list of receiver names", key=f"{at}.{key}")
            unknown = [v for v in value if v not in known]
            if unknown:
                raise ConfigError(
                    f"{at}.{key}: no notify entry is named {unknown[0]!r}", key=f"{at}.{key}"
                )
            names[key] = tuple(value)
        if not names["receivers"]:
            raise ConfigError(f"{at}.receivers: at least one", key=f"{at}.receivers")
        matchers: list[Matcher] = []
        match = entry.get("match") or {}
        if not isinstance(match, Mapping):
            raise ConfigError(f"{at}.match: a mapping of label: value", key=f"{at}.match")
        try:
            matchers += [Matcher(str(k), str(v)) for k, v in match.items()]
            extra_matchers = entry.get("matchers") or []
            if not isinstance(extra_matchers, list):
                raise InvalidInput("a list such as ['severity=~critical|warning']")
            matchers += [parse_matcher(str(m)) for m in extra_matchers]
        except InvalidInput as exc:
            raise ConfigError(f"{at}.matchers: {exc.message}", key=f"{at}.matchers") from None
        group_by = entry.get("group_by", ["alertname"])
        if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
            raise ConfigError(f"{at}.group_by: a list of label names", key=f"{at}.group_by")
        escalate = entry.get("escalate_after")
        if (escalate is None) != (not names["escalate_to"]):
            raise ConfigError(
                f"{at}.escalate_after: give escalate_after and escalate_to together",
                key=f"{at}.escalate_after",
            )
        routes.append(
            Route(
                name=str(entry.get("name") or f"route-{index}"),
                receivers=names["receivers"],
                matchers=tuple(matchers),
                group_by=None if "..." in group_by else tuple(group_by),
                group_wait=_span(entry, "group_wait", "30s", at, duration),
                group_interval=_span(entry, "group_interval", "5m", at, duration),
                repeat_interval=_span(entry, "repeat_interval", "4h", at, duration),
                continue_matching=bool(entry.get("continue", False)),
                escalate_after=None
                if escalate is None
                else duration(escalate, f"{at}.escalate_after"),
                escalate_to=names["escalate_to"],
            )
        )
    return routes


def _span(
    entry: Mapping[str, Any],
    key: str,
    default: str,
    at: str,
    duration: Callable[[Any, str], float],
) -> float:
    value = entry.get(key, default)
    if value in (0, "0", "0s"):
        return 0.0
    return duration(value, f"{at}.{key}")
