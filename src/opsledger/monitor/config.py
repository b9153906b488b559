"""The ``monitor`` section (or ``--config`` file): targets, rules, notifications.

Every setting but ``targets`` has a default, so the issue's smallest config runs as
written; time settings (``interval``, ``evaluation_interval``, a rule's ``for`` through
``rules.overrides``) accept Prometheus durations and can be made short for tests.
Errors name the key path (``monitor.targets[1].url``) and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from opsledger.core.errors import ConfigError
from opsledger.monitor.promql import PromQLError, parse_duration
from opsledger.monitor.slo import SLO, parse_slos
from opsledger.notify.routing import Matcher, Route, parse_routes

__all__ = ["MonitorConfig", "RulesConfig", "Target", "parse_monitor_config", "parse_target"]

TargetKind = Literal["evm", "http", "tls", "command", "indexer"]
_KINDS: tuple[str, ...] = ("evm", "http", "tls", "command", "indexer")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEV_CHAIN_IDS = frozenset({31337, 1337})
"""Local development chains (anvil, hardhat, geth --dev) have no peers by design."""


@dataclass(frozen=True)
class Target:
    name: str
    kind: TargetKind
    url: str = ""
    chain: str = ""
    interval: float = 15.0
    timeout: float = 5.0
    min_peers: int | None = None
    expect_status: int = 200
    body_match: str | None = None
    command: str | None = None
    metric: str = "opsledger_indexer_lag_blocks"
    component: str | None = None  # the status page's component this target belongs to


@dataclass(frozen=True)
class RulesConfig:
    defaults: bool = True
    files: tuple[str, ...] = ()
    groups: tuple[Any, ...] = ()
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    disable: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitorConfig:
    listen: str = "127.0.0.1:9100"
    vantage: str = "local"
    interval: float = 15.0
    evaluation_interval: float = 15.0
    jitter: float = 0.1
    targets: tuple[Target, ...] = ()
    rules: RulesConfig = field(default_factory=RulesConfig)
    notify: tuple[Mapping[str, Any], ...] = ()
    incident_severity: str = "critical"
    status_title: str = "Service status"
    slos: tuple[SLO, ...] = ()
    routes: tuple[Route, ...] = ()
    # the environment variable holding the write API's bearer token (not the token)
    api_token_env: str = "OPSLEDGER_MONITOR_TOKEN"  # noqa: S105
    receivers: tuple[str, ...] = ()  # the name of each notify entry, in order

    def receiver_names(self) -> dict[str, Mapping[str, Any]]:
        return dict(zip(self.receivers, self.notify, strict=True))


def _duration(value: Any, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    try:
        seconds = parse_duration(str(value))
    except PromQLError:
        raise ConfigError(
            f"{key}: bad duration {value!r} (use e.g. 500ms, 15s, 1m)", key=key
        ) from None
    if seconds <= 0:
        raise ConfigError(f"{key}: must be more than zero", key=key)
    return seconds


def _known(raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key", key=f"{where}.{unknown[0]}")


def _target(raw: Any, where: str, defaults: Mapping[str, float]) -> Target:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a target is a mapping", key=where)
    _known(
        raw,
        (
            "name",
            "kind",
            "url",
            "chain",
            "interval",
            "timeout",
            "min_peers",
            "expect_status",
            "body_match",
            "command",
            "metric",
            "component",
        ),
        where,
    )
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{where}.name: lower-case letters, digits, '.', '_' or '-'", key=f"{where}.name"
        )
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"{where}.kind: one of {', '.join(_KINDS)}", key=f"{where}.kind")
    url = raw.get("url", "")
    if kind == "command":
        if not isinstance(raw.get("command"), str) or not raw["command"].strip():
            raise ConfigError(
                f"{where}.command: a command probe needs a command", key=f"{where}.command"
            )
    else:
        parts = urlsplit(url) if isinstance(url, str) else None
        schemes = ("https",) if kind == "tls" else ("http", "https")
        if parts is None or parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(
                f"{where}.url: a {'/'.join(schemes)} URL with a host", key=f"{where}.url"
            )
    if kind == "evm" and not isinstance(raw.get("chain", ""), str):
        raise ConfigError(f"{where}.chain: must be a string", key=f"{where}.chain")
    body_match = raw.get("body_match")
    if body_match is not None:
        try:
            re.compile(str(body_match))
        except re.error as exc:
            raise ConfigError(
                f"{where}.body_match: bad regular expression: {exc}", key=f"{where}.body_match"
            ) from None
    min_peers = raw.get("min_peers")
    if min_peers is not None and (not isinstance(min_peers, int) or min_peers < 0):
        raise ConfigError(f"{where}.min_peers: a whole number >= 0", key=f"{where}.min_peers")
    return Target(
        name=name,
        kind=kind,
        url=url or "",
        chain=str(raw.get("chain") or (name if kind == "evm" else "")),
        interval=_duration(raw.get("interval", defaults["interval"]), f"{where}.interval"),
        timeout=_duration(raw.get("timeout", defaults["timeout"]), f"{where}.timeout"),
        min_peers=min_peers,
        expect_status=int(raw.get("expect_status", 200)),
        body_match=None if body_match is None else str(body_match),
        command=raw.get("command"),
        metric=str(raw.get("metric", "opsledger_indexer_lag_blocks")),
        component=raw.get("component"),
    )


def parse_target(raw: Any, where: str, defaults: Mapping[str, float]) -> Target:
    """One target entry, validated as in the config file (the targets API uses it)."""
    return _target(raw, where, defaults)


def _rules(raw: Any, where: str) -> RulesConfig:
    if raw is None:
        return RulesConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: a mapping (defaults, files, groups, overrides, disable)", key=where
        )
    _known(raw, ("defaults", "files", "groups", "overrides", "disable"), where)
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping) or not all(
        isinstance(v, Mapping) for v in overrides.values()
    ):
        raise ConfigError(
            f"{where}.overrides: alert name -> {{for: ..., labels: ...}}", key=f"{where}.overrides"
        )
    for name, override in overrides.items():
        _known(
            override,
            ("for", "keep_firing_for", "labels", "annotations", "expr"),
            f"{where}.overrides.{name}",
        )
    for key in ("files", "groups", "disable"):
        if not isinstance(raw.get(key) or [], list):
            raise ConfigError(f"{where}.{key}: must be a list", key=f"{where}.{key}")
    return RulesConfig(
        defaults=bool(raw.get("defaults", True)),
        files=tuple(str(f) for f in raw.get("files") or []),
        groups=tuple(raw.get("groups") or []),
        overrides={str(k): dict(v) for k, v in overrides.items()},
        disable=tuple(str(d) for d in raw.get("disable") or []),
    )


def parse_monitor_config(section: Any, *, where: str = "monitor") -> MonitorConfig:
    """Validate the ``monitor`` mapping; ``where`` prefixes every error's key path."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: the monitor section is a mapping", key=where)
    _known(
        section,
        (
            "listen",
            "vantage",
            "interval",
            "timeout",
            "evaluation_interval",
            "jitter",
            "targets",
            "rules",
            "notify",
            "incidents",
            "status",
            "slos",
            "routes",
            "api_token_env",
        ),
        where,
    )
    listen = str(section.get("listen", "127.0.0.1:9100"))
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}.listen: HOST:PORT, e.g. 127.0.0.1:9100", key=f"{where}.listen")
    defaults = {
        "interval": _duration(section.get("interval", "15s"), f"{where}.interval"),
        "timeout": _duration(section.get("timeout", "5s"), f"{where}.timeout"),
    }
    raw_targets = section.get("targets")
    if not isinstance(raw_targets, list) or not raw_targets:
        raise ConfigError(f"{where}.targets: a list of at least one target", key=f"{where}.targets")
    targets = tuple(
        _target(t, f"{where}.targets[{i}]", defaults) for i, t in enumerate(raw_targets)
    )
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}.targets: name {twice[0]!r} used twice", key=f"{where}.targets")
    jitter = section.get("jitter", 0.1)
    if not isinstance(jitter, int | float) or not 0 <= jitter < 1:
        raise ConfigError(f"{where}.jitter: a fraction between 0 and 1", key=f"{where}.jitter")
    notify = section.get("notify") or []
    if not isinstance(notify, list) or not all(isinstance(n, Mapping) for n in notify):
        raise ConfigError(f"{where}.notify: a list of targets", key=f"{where}.notify")
    receivers = tuple(
        str(n.get("name") or f"{n.get('kind', 'webhook')}-{i}") for i, n in enumerate(notify)
    )
    doubled = sorted({n for n in receivers if receivers.count(n) > 1})
    if doubled:
        raise ConfigError(f"{where}.notify: name {doubled[0]!r} used twice", key=f"{where}.notify")
    if "routes" in section:
        routes = parse_routes(
            section["routes"], receivers, where=f"{where}.routes", duration=_duration
        )
    else:
        routes = [
            _legacy_route(entry, name, f"{where}.notify[{i}]")
            for i, (name, entry) in enumerate(zip(receivers, notify, strict=True))
        ]
    incidents = section.get("incidents") or {}
    if not isinstance(incidents, Mapping):
        raise ConfigError(f"{where}.incidents: a mapping", key=f"{where}.incidents")
    _known(incidents, ("open_on",), f"{where}.incidents")
    status = section.get("status") or {}
    if not isinstance(status, Mapping):
        raise ConfigError(f"{where}.status: a mapping", key=f"{where}.status")
    _known(status, ("title",), f"{where}.status")
    components = {t.component for t in targets if t.component}
    slos = parse_slos(section.get("slos"), f"{where}.slos", {*names, *components})
    return MonitorConfig(
        listen=listen,
        vantage=str(section.get("vantage", "local")),
        interval=defaults["interval"],
        evaluation_interval=_duration(
            section.get("evaluation_interval", "15s"), f"{where}.evaluation_interval"
        ),
        jitter=float(jitter),
        targets=targets,
        rules=_rules(section.get("rules"), f"{where}.rules"),
        notify=tuple(dict(n) for n in notify),
        incident_severity=str(incidents.get("open_on", "critical")),
        status_title=str(status.get("title", "Service status")),
        slos=slos,
        routes=tuple(routes),
        receivers=receivers,
        api_token_env=str(section.get("api_token_env", "OPSLEDGER_MONITOR_TOKEN")),
    )


def _legacy_route(entry: Mapping[str, Any], name: str, where: str) -> Route:
    """Without ``routes``, each notify entry is its own route (its ``match`` labels):
    every alert alone, at once, repeated every 4h while it fires."""
    match = entry.get("match") or {}
    if not isinstance(match, Mapping):
        raise ConfigError(f"{where}.match: a mapping of label: value", key=f"{where}.match")
    return Route(
        name=name,
        receivers=(name,),
        matchers=tuple(Matcher(str(k), str(v)) for k, v in match.items()),
        group_by=None,
        group_wait=0.0,
        group_interval=0.0,
    )
