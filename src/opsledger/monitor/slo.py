"""Service-level objectives: SLIs counted from probes, burn-rate alerts, ledger reports.

An SLO names a ``target`` (a monitor target, or every target of a status-page
component), an SLI (``availability``: probes that succeed; ``latency``: probes that
succeed under ``threshold_ms``), an ``objective`` in percent and a ``window`` (30d).
Every probe of a matching target adds one *event* and, if it was good, one *good*
event, to two counters exported per SLO (``opsledger_monitor_slo_events_total`` and
``opsledger_monitor_slo_good_total``, label ``slo``).

Alerts are the Google SRE workbook's multi-window, multi-burn-rate alerts, written over
those counters without recording rules so the same file loads into Prometheus: a page
when both the 1h and 5m error ratios exceed 14.4x the budget (2% of a 30-day budget in
an hour) or both 6h and 30m exceed 6x; a ticket when 1d and 2h exceed 3x or 3d and 6h
exceed 1x. The short window makes the alert stop soon after the burn stops.

The ledger keeps the evidence: every ``report_every`` (1h by default, aligned to the
clock) the monitor records one ``slo.reported`` per SLO for the window just closed
(total, good, p95 latency). That is the type the ``sla`` contract reads, so an SLA
verdict (and its ``sla.violation``) follows from what the probes saw, and
``opsledger slo report`` sums the windows of a period into uptime and budget left.
Windows are disjoint, so summing them is exact; a monitor that stops reports the
partial window it had.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from opsledger.core import format_ts
from opsledger.core.errors import ConfigError
from opsledger.monitor.promql import PromQLError, parse_duration

__all__ = [
    "BURN_WINDOWS",
    "SLO",
    "SLO_METRICS",
    "SloTracker",
    "budget_figures",
    "parse_slos",
    "slo_rule_groups",
]

SLO_METRICS: dict[str, tuple[str, str]] = {
    "opsledger_monitor_slo_events_total": ("counter", "Probes counted by an SLO"),
    "opsledger_monitor_slo_good_total": ("counter", "Probes an SLO counts as good"),
}
SLO_RETENTION = 3 * 86400.0 + 3600.0
"""The slowest burn-rate window is 3 days: the SLO counters are kept that long."""

BURN_WINDOWS: tuple[tuple[str, str, str, float], ...] = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "1d", "2h", 3.0),
    ("ticket", "3d", "6h", 1.0),
)
"""(severity class, long window, short window, burn-rate factor): the SRE workbook's."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
Sli = Literal["availability", "latency"]


@dataclass(frozen=True)
class SLO:
    name: str
    target: str
    sli: Sli = "availability"
    objective: float = 99.9
    threshold_ms: float | None = None
    window: float = 30 * 86400.0
    report_every: float = 3600.0
    service: str = ""  # the slo.reported service (what an sla contract's params.service names)

    @property
    def budget(self) -> float:
        """The share of events allowed to be bad (0.001 for 99.9%)."""
        return 1.0 - self.objective / 100.0

    def applies_to(self, target: str, component: str | None) -> bool:
        return self.target in (target, component)


def _duration(value: Any, key: str) -> float:
    try:
        seconds = parse_duration(str(value))
    except PromQLError:
        raise ConfigError(f"{key}: bad duration {value!r} (use e.g. 1h, 30d)", key=key) from None
    if seconds <= 0:
        raise ConfigError(f"{key}: must be more than zero", key=key)
    return seconds


def parse_slos(raw: Any, where: str, names: Iterable[str]) -> tuple[SLO, ...]:
    """Validate ``monitor.slos``; ``names`` are the target and component names an SLO
    may point at."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: a list of SLOs", key=where)
    known = set(names)
    slos: list[SLO] = []
    allowed = {"name", "target", "sli", "objective", "threshold_ms", "window", "report_every"}
    allowed.add("service")
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: an SLO is a mapping", key=at)
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ConfigError(f"{at}.{unknown[0]}: unknown key", key=f"{at}.{unknown[0]}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{at}.name: lower-case letters, digits, '.', '_' or '-'", key=f"{at}.name"
            )
        target = entry.get("target")
        if not isinstance(target, str) or target not in known:
            raise ConfigError(
                f"{at}.target: {target!r} is neither a target nor a component", key=f"{at}.target"
            )
        sli = entry.get("sli", "availability")
        if sli not in ("availability", "latency"):
            raise ConfigError(f"{at}.sli: availability or latency", key=f"{at}.sli")
        objective = entry.get("objective", 99.9)
        if (
            not isinstance(objective, int | float)
            or isinstance(objective, bool)
            or not 0 < objective < 100
        ):
            raise ConfigError(
                f"{at}.objective: a percentage above 0 and below 100, e.g. 99.9",
                key=f"{at}.objective",
            )
        threshold = entry.get("threshold_ms")
        if sli == "latency":
            if (
                not isinstance(threshold, int | float)
                or isinstance(threshold, bool)
                or threshold <= 0
            ):
                raise ConfigError(
                    f"{at}.threshold_ms: a latency SLO needs a threshold in ms",
                    key=f"{at}.threshold_ms",
                )
        elif threshold is not None:
            raise ConfigError(f"{at}.threshold_ms: only for sli: latency", key=f"{at}.threshold_ms")
        service = entry.get("service", name)
        if not isinstance(service, str) or not service:
            raise ConfigError(f"{at}.service: a service name", key=f"{at}.service")
        slos.append(
            SLO(
                name=name,
                target=target,
                sli=sli,
                objective=float(objective),
                threshold_ms=None if threshold is None else float(threshold),
                window=_duration(entry.get("window", "30d"), f"{at}.window"),
                report_every=_duration(entry.get("report_every", "1h"), f"{at}.report_every"),
                service=service,
            )
        )
    seen = [s.name for s in slos]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: SLO name {twice[0]!r} used twice", key=where)
    return tuple(slos)


# ---------------------------------------------------------------- alerts


def _error_ratio(slo: str, window: str) -> str:
    good = f'sum by (slo) (increase(opsledger_monitor_slo_good_total{{slo="{slo}"}}[{window}]))'
    events = f'sum by (slo) (increase(opsledger_monitor_slo_events_total{{slo="{slo}"}}[{window}]))'
    return f"(1 - {good} / {events})"


def _number(value: float) -> str:
    return f"{value:.10g}"


def slo_rule_groups(slos: Sequence[SLO]) -> list[dict[str, Any]]:
    """One rule group with a page alert (``SLOBurnRateCritical``, severity critical) and a
    ticket alert (``SLOBurnRateWarning``, severity warning) per SLO, in the rule-file
    format ``load_rule_groups`` and Prometheus both read."""
    if not slos:
        return []
    rules: list[dict[str, Any]] = []
    for slo in slos:
        for klass, alert, severity, wait in (
            ("page", "SLOBurnRateCritical", "critical", "2m"),
            ("ticket", "SLOBurnRateWarning", "warning", "15m"),
        ):
            parts = []
            for _, long, short, factor in (w for w in BURN_WINDOWS if w[0] == klass):
                threshold = _number(factor * slo.budget)
                parts.append(
                    f"({_error_ratio(slo.name, long)} > {threshold}"
                    f" and {_error_ratio(slo.name, short)} > {threshold})"
                )
            rules.append(
                {
                    "alert": alert,
                    "expr": " or ".join(parts),
                    "for": wait,
                    "labels": {"severity": severity, "slo": slo.name},
                    "annotations": {
                        "summary": f"SLO {slo.name} ({_number(slo.objective)}% {slo.sli} of"
                        f" {slo.target}) is burning its error budget too fast"
                        " (error ratio {{ $value }})",
                        "runbook_url": "https://opsledger.dev/runbooks/slo-burn-rate",
                    },
                }
            )
    return [{"name": "opsledger-slos", "rules": rules}]


# ---------------------------------------------------------------- counting and reports


@dataclass
class _Window:
    start: float
    total: int = 0
    good: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class SloTracker:
    """Counts each SLO's events per report window and says when a window closed."""

    def __init__(self, slos: Sequence[SLO], *, vantage: str = "local") -> None:
        self.slos = list(slos)
        self.vantage = vantage
        self._windows: dict[str, _Window] = {}

    def matching(self, target: str, component: str | None) -> list[SLO]:
        return [s for s in self.slos if s.applies_to(target, component)]

    @staticmethod
    def is_good(slo: SLO, up: bool, latency_ms: float) -> bool:
        if slo.sli == "availability":
            return up
        assert slo.threshold_ms is not None  # checked by the config
        return up and latency_ms <= slo.threshold_ms

    def observe(self, slo: SLO, good: bool, latency_ms: float, at: float) -> None:
        window = self._windows.get(slo.name)
        if window is None:
            window = self._windows[slo.name] = _Window(_floor(at, slo.report_every))
        window.total += 1
        window.good += 1 if good else 0
        window.latencies_ms.append(latency_ms)

    def due(self, at: float, *, final: bool = False) -> list[tuple[SLO, dict[str, Any]]]:
        """``slo.reported`` bodies for every window that closed by ``at`` (or, when
        ``final``, every open window up to ``at``); those windows start afresh."""
        reports = []
        for slo in self.slos:
            window = self._windows.get(slo.name)
            if window is None:
                continue
            end = window.start + slo.report_every
            if at < end and not final:
                continue
            end = min(end, at) if final else end
            if window.total:
                reports.append((slo, self._body(slo, window, end)))
            if final:
                del self._windows[slo.name]
            else:
                self._windows[slo.name] = _Window(_floor(at, slo.report_every))
        return reports

    def _body(self, slo: SLO, window: _Window, end: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "service": slo.service,
            "window_start": _ts(window.start),
            "window_end": _ts(max(end, window.start)),
            "total": window.total,
            "good": window.good,
            "source": f"opsledger-monitor/{self.vantage}",
            "slo": slo.name,
            "sli": slo.sli,
            "objective": slo.objective,
            "target": slo.target,
        }
        if window.latencies_ms:
            body["latency_p95_ms"] = round(_percentile(window.latencies_ms, 0.95), 3)
            body["latency_p99_ms"] = round(_percentile(window.latencies_ms, 0.99), 3)
        return body


def _floor(at: float, step: float) -> float:
    return math.floor(at / step) * step


def _ts(at: float) -> str:
    return format_ts(datetime.fromtimestamp(at, UTC))


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def budget_figures(total: int, good: int, objective: float) -> dict[str, Any]:
    """Availability, nines and error budget for ``good`` of ``total`` events against
    ``objective`` percent. Nines are ``-log10(1 - availability)`` (99.95% is 3.3 nines);
    a perfect record has no finite nines and reports None. Budget left is
    ``1 - bad / allowed`` in percent, negative once the budget is overspent."""
    bad = total - good
    ratio = 1.0 if total == 0 else good / total
    allowed = (1.0 - objective / 100.0) * total
    left = (100.0 if bad == 0 else 0.0) if allowed <= 0 else 100.0 * (1.0 - bad / allowed)
    return {
        "total": total,
        "good": good,
        "bad": bad,
        "availability": round(100.0 * ratio, 4),
        "nines": None if ratio >= 1.0 else round(-math.log10(1.0 - ratio), 2),
        "objective": objective,
        "budget_allowed": round(allowed, 2),
        "budget_left_percent": round(max(left, -999.0), 2),
        "met": total == 0 or 100.0 * ratio >= objective,
    }
