"""The ``deploy:`` mapping, validated into typed settings before anything runs.

A pipeline job's ``deploy:`` mapping, the standalone ``opsledger deploy --config`` file and
the ``deploy`` section of ``opsledger.yaml`` share this shape (docs/deploy.md has the full
reference). Every error names where the mapping came from and the dotted key path, and
unknown keys are refused: a typo in a health gate must not silently deploy without it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opsledger.core import ConfigError

__all__ = [
    "CanarySettings",
    "DeploySettings",
    "HealthSettings",
    "HttpCheck",
    "KubernetesSettings",
    "MetricSettings",
    "ProcessSettings",
    "ScriptSettings",
    "Strategy",
    "parse_duration",
    "parse_environments",
    "parse_settings",
]

Strategy = Literal["rolling", "blue-green", "canary"]
STRATEGIES: tuple[Strategy, ...] = ("rolling", "blue-green", "canary")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """GET ``path`` on each new instance; healthy when the status matches and, if given,
    the body matches the regular expression ``body``."""

    path: str = "/health"
    status: int = 200
    body: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class MetricSettings:
    """Thresholds over what the switch measured for the new version during ``window``.
    ``probe_rps`` > 0 sends synthetic GETs to ``probe_path`` through the switch meanwhile,
    so a quiet service still gets judged."""

    window_s: float = 10.0
    max_error_rate: float | None = None
    max_latency_p95_ms: float | None = None
    min_requests: int = 1
    probe_path: str = "/"
    probe_rps: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthSettings:
    http: HttpCheck | None = None
    command: tuple[str, ...] | None = None
    timeout_s: float = 30.0
    interval_s: float = 0.2
    metrics: MetricSettings | None = None


@dataclass(frozen=True, slots=True)
class CanarySettings:
    steps: tuple[int, ...] = (5, 25, 100)
    hold_s: float = 30.0
    instances: int = 1


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    """Run the service as local processes behind the built-in weighted switch."""

    command: tuple[str, ...]
    instances: int = 1
    artifact: str | None = None
    listen: str = "127.0.0.1:0"
    env: Mapping[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 5.0
    kind: Literal["process"] = "process"


@dataclass(frozen=True, slots=True)
class ScriptSettings:
    """User hooks; each is a command line run without a shell unless it starts with sh."""

    deploy: tuple[str, ...]
    switch: tuple[str, ...] | None = None
    health: tuple[str, ...] | None = None
    rollback: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    instances: int = 1
    timeout_s: float = 300.0
    env: Mapping[str, str] = field(default_factory=dict)
    kind: Literal["script"] = "script"


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    manifest: str
    deployment: str
    namespace: str | None = None
    context: str | None = None
    container: str | None = None
    image: str | None = None
    kubectl: str = "kubectl"
    timeout_s: float = 300.0
    kind: Literal["kubernetes"] = "kubernetes"


@dataclass(frozen=True, slots=True)
class DeploySettings:
    service: str
    environment: str
    strategy: Strategy
    target: ProcessSettings | ScriptSettings | KubernetesSettings
    health: HealthSettings = field(default_factory=HealthSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    protected: bool = False
    state_dir: str | None = None
    artifact: str | None = None  # in a pipeline: which input artifact ships
    version: str | None = None  # in a pipeline: the version (default: the run's)


class _Reader:
    """Typed access to one mapping with errors that name ``where`` and the key path."""

    def __init__(self, raw: Any, where: str, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: {path or 'deploy'} must be a mapping", key=path or None)
        unknown = sorted(str(k) for k in raw if str(k) not in allowed)
        if unknown:
            key = self.key(path, unknown[0])
            raise ConfigError(
                f"{where}: unknown key {key} (allowed: {', '.join(allowed)})", key=key
            )
        self.raw, self.where, self.path = raw, where, path

    @staticmethod
    def key(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def fail(self, name: str, reason: str) -> ConfigError:
        key = self.key(self.path, name)
        return ConfigError(f"{self.where}: {key} {reason}", key=key)

    def has(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def name(self, name: str, default: str | None = None) -> str:
        value = self.raw.get(name, default)
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.fail(name, "must be a name: letters, digits, '.', '_' or '-'")
        return value

    def text(self, name: str, default: str | None = None) -> str:
        value = self.raw.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.fail(name, "must be a non-empty string")
        return value

    def opt_text(self, name: str) -> str | None:
        return self.text(name) if self.has(name) else None

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, "must be true or false")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(name, f"must be an integer from {low} to {high}")
        return value

    def number(self, name: str, low: float, high: float) -> float | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, "must be a number")
        if not low <= value <= high:
            raise self.fail(name, f"must be between {low} and {high}")
        return float(value)

    def duration(self, name: str, default: float) -> float:
        value = self.raw.get(name)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(name, str(exc)) from exc

    def command(self, name: str) -> tuple[str, ...] | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise self.fail(name, f"is not a valid command line: {exc}") from exc
        elif isinstance(value, list) and all(isinstance(a, str) for a in value):
            argv = list(value)
        else:
            raise self.fail(name, "must be a command line string or a list of strings")
        if not argv:
            raise self.fail(name, "must not be empty")
        return tuple(argv)

    def env(self, name: str) -> dict[str, str]:
        value = self.raw.get(name) or {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.fail(name, "must be a mapping of variable names to values")
        return {str(k): str(v) for k, v in value.items()}

    def sub(self, name: str, allowed: Sequence[str]) -> _Reader:
        return _Reader(self.raw.get(name) or {}, self.where, self.key(self.path, name), allowed)


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``2.5``, ``500ms``, ``30s``, ``2m`` or ``1h``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 500ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError("must be a duration such as 30s, 500ms or 2m")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0 or seconds > 7 * 86400:
        raise ValueError("must be between 0 and 7 days")
    return seconds


def _process(r: _Reader) -> ProcessSettings:
    command = r.command("command")
    if command is None:
        raise r.fail("command", "is required: the command line that starts one instance")
    listen = r.text("listen", "127.0.0.1:0")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise r.fail("listen", "must be HOST:PORT (port 0: pick a free one)")
    return ProcessSettings(
        command=command,
        instances=r.integer("instances", 1, 1, 64),
        artifact=r.opt_text("artifact"),
        listen=listen,
        env=r.env("env"),
        stop_timeout_s=r.duration("stop_timeout", 5.0),
    )


def _script(r: _Reader) -> ScriptSettings:
    deploy = r.command("deploy")
    if deploy is None:
        raise r.fail("deploy", "is required: the hook that starts the new version")
    return ScriptSettings(
        deploy=deploy,
        switch=r.command("switch"),
        health=r.command("health"),
        rollback=r.command("rollback"),
        stop=r.command("stop"),
        instances=r.integer("instances", 1, 1, 64),
        timeout_s=r.duration("timeout", 300.0),
        env=r.env("env"),
    )


def _kubernetes(r: _Reader) -> KubernetesSettings:
    return KubernetesSettings(
        manifest=r.text("manifest"),
        deployment=r.name("deployment"),
        namespace=r.name("namespace") if r.has("namespace") else None,
        context=r.opt_text("context"),
        container=r.name("container") if r.has("container") else None,
        image=r.opt_text("image"),
        kubectl=r.text("kubectl", "kubectl"),
        timeout_s=r.duration("timeout", 300.0),
    )


_TARGET_KEYS = {
    "process": ("kind", "command", "instances", "artifact", "listen", "env", "stop_timeout"),
    "script": (
        "kind",
        "deploy",
        "switch",
        "health",
        "rollback",
        "stop",
        "instances",
        "timeout",
        "env",
    ),
    "kubernetes": (
        "kind",
        "manifest",
        "deployment",
        "namespace",
        "context",
        "container",
        "image",
        "kubectl",
        "timeout",
    ),
}


def _target(top: _Reader) -> ProcessSettings | ScriptSettings | KubernetesSettings:
    raw = top.raw.get("target")
    if not isinstance(raw, Mapping):
        raise top.fail("target", "is required: a mapping with kind process, script or kubernetes")
    kind = raw.get("kind")
    if kind not in _TARGET_KEYS:
        raise top.fail("target.kind", "must be process, script or kubernetes")
    r = top.sub("target", _TARGET_KEYS[kind])
    if kind == "process":
        return _process(r)
    if kind == "script":
        return _script(r)
    return _kubernetes(r)


def _health(top: _Reader) -> HealthSettings:
    r = top.sub("health", ("http", "command", "timeout", "interval", "metrics"))
    http = None
    if r.has("http"):
        h = r.sub("http", ("path", "status", "body"))
        path = h.text("path", "/health")
        if not path.startswith("/"):
            raise h.fail("path", "must start with /")
        pattern = None
        if h.has("body"):
            try:
                pattern = re.compile(h.text("body"))
            except re.error as exc:
                raise h.fail("body", f"is not a valid regular expression: {exc}") from exc
        http = HttpCheck(path=path, status=h.integer("status", 200, 100, 599), body=pattern)
    metrics = None
    if r.has("metrics"):
        m = r.sub(
            "metrics",
            ("window", "max_error_rate", "max_latency_p95_ms", "min_requests", "probe"),
        )
        p = m.sub("probe", ("path", "rps"))
        probe_path = p.text("path", "/")
        if not probe_path.startswith("/"):
            raise p.fail("path", "must start with /")
        metrics = MetricSettings(
            window_s=m.duration("window", 10.0),
            max_error_rate=m.number("max_error_rate", 0.0, 1.0),
            max_latency_p95_ms=m.number("max_latency_p95_ms", 0.0, 3_600_000.0),
            min_requests=m.integer("min_requests", 1, 0, 10_000_000),
            probe_path=probe_path,
            probe_rps=p.number("rps", 0.0, 1000.0) or 0.0,
        )
    return HealthSettings(
        http=http,
        command=r.command("command"),
        timeout_s=r.duration("timeout", 30.0),
        interval_s=r.duration("interval", 0.2),
        metrics=metrics,
    )


def _canary(top: _Reader) -> CanarySettings:
    r = top.sub("canary", ("steps", "hold", "instances"))
    steps_raw = r.raw.get("steps", [5, 25, 100])
    if (
        not isinstance(steps_raw, list)
        or not steps_raw
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps_raw)
    ):
        raise r.fail("steps", "must be a list of percentages such as [5, 25, 100]")
    steps = tuple(int(s) for s in steps_raw)
    if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise r.fail("steps", "must be increasing percentages between 1 and 100")
    if steps[-1] != 100:
        steps = (*steps, 100)
    return CanarySettings(
        steps=steps,
        hold_s=r.duration("hold", 30.0),
        instances=r.integer("instances", 1, 1, 64),
    )


def parse_environments(raw: Any, where: str, path: str = "environments") -> dict[str, bool]:
    """``{name: {protected: bool}}`` -> ``{name: protected}``."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {path} must be a mapping of environment names", key=path)
    out: dict[str, bool] = {}
    for name, spec in raw.items():
        r = _Reader(spec or {}, where, f"{path}.{name}", ("protected",))
        out[str(name)] = r.boolean("protected", False)
    return out


_TOP_KEYS = (
    "service",
    "environment",
    "strategy",
    "target",
    "health",
    "canary",
    "protected",
    "environments",
    "state_dir",
    "artifact",
    "version",
)


def parse_settings(
    raw: Mapping[str, Any], where: str, environments: Mapping[str, bool] | None = None
) -> DeploySettings:
    """Validate a ``deploy:`` mapping. ``environments`` (from ``opsledger.yaml``'s
    ``deploy.environments``) says which environments are protected; the mapping's own
    ``environments`` and ``protected`` add to it, never remove protection."""
    top = _Reader(raw, where, "", _TOP_KEYS)
    strategy = top.raw.get("strategy")
    if strategy not in STRATEGIES:
        raise top.fail("strategy", "must be rolling, blue-green or canary")
    environment = top.name("environment")
    own = parse_environments(top.raw.get("environments"), where)
    protected = (
        top.boolean("protected", False)
        or own.get(environment, False)
        or bool((environments or {}).get(environment, False))
    )
    target = _target(top)
    if isinstance(target, KubernetesSettings) and strategy != "rolling":
        raise top.fail(
            "strategy",
            "must be rolling with the kubernetes target (kubectl rollout); use the script "
            "target with your mesh's hooks for blue-green or canary",
        )
    settings = DeploySettings(
        service=top.name("service"),
        environment=environment,
        strategy=strategy,
        target=target,
        health=_health(top),
        canary=_canary(top),
        protected=protected,
        state_dir=top.opt_text("state_dir"),
        artifact=top.opt_text("artifact"),
        version=top.opt_text("version"),
    )
    if settings.health.metrics is not None and not isinstance(target, ProcessSettings):
        raise top.fail(
            "health.metrics",
            "needs the process target: the metrics are measured by its switch",
        )
    return settings
