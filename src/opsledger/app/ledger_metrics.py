"""Delivery metrics read from the ledger, exported to Prometheus at the API's ``/metrics``.

The ledger already holds every deploy, rollback, pipeline run, job result and incident,
so Grafana (``deploy/grafana/pipelines-dora.json``) can chart delivery without a second
source of truth: ``LedgerMetricsCollector`` reads those transactions and exports them as

* counters of everything recorded: ``opsledger_deploys_total{service,environment,status}``,
  ``opsledger_deploy_rollbacks_total``, ``opsledger_pipeline_runs_total{pipeline,status}``,
  ``opsledger_pipeline_run_duration_seconds`` (a summary), ``opsledger_pipeline_jobs_total
  {status}``, ``opsledger_incidents_opened_total{severity}``. The ledger is append-only,
  so these only grow: ``increase(...[1d])`` means what it says;
* the DORA figures of ``opsledger dora`` as gauges over a window (30 days by default),
  for all services (``service="all"``) and for each service: ``opsledger_dora_*`` plus
  the totals behind every ratio (``opsledger_dora_totals{total}``) and the tier of each
  figure (``opsledger_dora_tier{metric,tier} 1``). The computation is the very function
  ``opsledger dora`` calls (``opsledger.pipeline.dora.compute_dora``), so the dashboard
  and the CLI cannot disagree.

Scrapes are cheap and bounded: transactions are read incrementally (a cursor per type,
only what was appended since the last refresh), and the figures are recomputed at most
every ``refresh`` seconds (30 by default), or every ten times the last recomputation's
duration if that is longer; a scrape in between gets the cached samples.
A ledger that cannot be read keeps the last figures and counts the failure
(``opsledger_ledger_metrics_errors_total``) rather than failing the whole ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from opsledger.client.base import LedgerClient
from opsledger.core import Clock, SystemClock
from opsledger.pipeline.dora import DORA_TYPES, DoraQuery, compute_dora, parse_window

__all__ = [
    "DEFAULT_REFRESH",
    "DORA_FIGURES",
    "LedgerMetricsCollector",
    "LedgerTally",
    "read_new_rows",
]

log = structlog.get_logger(__name__)

DEFAULT_REFRESH = 30.0
"""Seconds a computed set of samples is served before the ledger is read again."""

_PAGE = 1000
_COUNTED_TYPES = ("pipeline.finished", "job.finished")
_ALL = "all"
_MAX_SERVICES = 50
"""Per-service DORA gauges for at most this many services (the most deployed ones)."""

DORA_FIGURES: dict[str, tuple[str, str]] = {
    "deployment_frequency_per_day": (
        "opsledger_dora_deployment_frequency_per_day",
        "Successful production deployments per day over the window",
    ),
    "lead_time_hours": (
        "opsledger_dora_lead_time_hours",
        "Median hours from commit to the production deploy that shipped it",
    ),
    "change_failure_rate": (
        "opsledger_dora_change_failure_rate",
        "Share of production deployments rolled back or linked to an incident (0 to 1)",
    ),
    "time_to_restore_hours": (
        "opsledger_dora_time_to_restore_hours",
        "Median hours from incident opened to resolved",
    ),
    "failed_deployment_recovery_time_hours": (
        "opsledger_dora_failed_deployment_recovery_time_hours",
        "Median hours from a failed deployment to its recovery",
    ),
    "deployment_rework_rate": (
        "opsledger_dora_deployment_rework_rate",
        "Share of successful deployments made to fix an incident (0 to 1)",
    ),
    "defect_escape_rate": (
        "opsledger_dora_defect_escape_rate",
        "Share of defective changes found in production (0 to 1)",
    ),
}
"""Report key -> (metric name, help). A figure the window has no data for (no deploys,
no incidents) is left out rather than exported as 0, which would read as a perfect score."""


@dataclass
class LedgerTally:
    """What has been read so far: running counts, and the rows DORA needs."""

    cursors: dict[str, int] = field(default_factory=dict)
    deploys: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    rollbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    run_seconds: dict[str, float] = field(default_factory=dict)
    run_timed: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)
    dora_rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: Mapping[str, Any]) -> None:
        tx = row.get("transaction") or {}
        kind = str(tx.get("type", ""))
        body = tx.get("body") or {}
        if kind == "deploy.finished":
            key = (_label(body.get("service")), _label(body.get("environment")))
            self.deploys[(*key, _label(body.get("status")))] += 1
        elif kind == "deploy.rolled_back":
            self.rollbacks[(_label(body.get("service")), _label(body.get("environment")))] += 1
        elif kind == "pipeline.finished":
            pipeline = _label(body.get("pipeline"))
            self.runs[(pipeline, _label(body.get("status")))] += 1
            duration = body.get("duration_ms")
            if isinstance(duration, int | float) and not isinstance(duration, bool):
                self.run_seconds[pipeline] = self.run_seconds.get(pipeline, 0.0) + duration / 1e3
                self.run_timed[pipeline] += 1
        elif kind == "job.finished":
            self.jobs[_label(body.get("outcome") or body.get("status"))] += 1
        elif kind == "incident.opened":
            self.incidents[_label(body.get("severity"))] += 1
        if kind in DORA_TYPES and _dora_relevant(kind, body):
            # keep only what compute_dora reads: bounded memory on a long ledger
            self.dora_rows.append(
                {
                    "tx_id": row.get("tx_id"),
                    "leaf_index": row.get("leaf_index", 0),
                    "transaction": {"type": kind, "ts": tx.get("ts"), "body": body},
                }
            )


def _label(value: Any) -> str:
    return str(value) if value not in (None, "") else "unknown"


def _dora_relevant(kind: str, body: Mapping[str, Any]) -> bool:
    """Passing test results are the bulk of a ledger and DORA ignores them."""
    if kind != "test.finished":
        return True
    return body.get("status") != "success" or bool(body.get("failed"))


def read_new_rows(
    client: LedgerClient, tally: LedgerTally, types: Iterable[str], *, page: int = _PAGE
) -> int:
    """Add every transaction of ``types`` appended since the last call; how many."""
    added = 0
    for tx_type in types:
        while True:
            filters: dict[str, Any] = {"type": tx_type, "limit": page}
            if tx_type in tally.cursors:
                filters["after"] = tally.cursors[tx_type]
            rows = client.list_transactions(filters)
            for row in rows:
                tally.add(row)
            added += len(rows)
            if rows:
                tally.cursors[tx_type] = int(rows[-1]["leaf_index"])
            if len(rows) < page:
                break
    return added


class LedgerMetricsCollector(Collector):
    """A ``prometheus_client`` collector over one ledger client (see the module docs).

    ``client`` is used from the scraping thread, under this collector's lock; pass a
    client that may be shared that way (the API's own ``LocalClient``)."""

    def __init__(
        self,
        client: LedgerClient,
        *,
        refresh: float = DEFAULT_REFRESH,
        window: str = "30d",
        environment: str = "production",
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.refresh = refresh
        self.window = window
        self.span = parse_window(window)
        self.environment = environment
        self.clock: Clock = clock or SystemClock()
        self.monotonic = monotonic
        self.tally = LedgerTally()
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._computed_at = 0.0
        self._errors = 0
        self._last_seconds = 0.0
        self._last_at = 0.0
        self.refreshes = 0

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry check names without reading
        the ledger at registration time."""
        return self._families(empty=True)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self.monotonic()
            # a slow ledger read never takes more than a tenth of a core, however often
            # Prometheus scrapes
            interval = max(self.refresh, 10 * self._last_seconds)
            if self._cached is None or now - self._computed_at >= interval:
                self._recompute()
                self._computed_at = now
            assert self._cached is not None
            return list(self._cached)

    def _recompute(self) -> None:
        started = time.perf_counter()
        try:
            read_new_rows(self.client, self.tally, (*DORA_TYPES, *_COUNTED_TYPES))
            reports = self._dora_reports()
        except Exception as exc:  # a scrape must not fail because the ledger hiccupped
            self._errors += 1
            log.warning("ledger metrics refresh failed", error=str(exc))
            if self._cached is not None:
                self._cached = [
                    m for m in self._cached if m.name != "opsledger_ledger_metrics_errors"
                ]
                self._cached.append(self._error_family())
                return
            reports = []
        self._last_seconds = time.perf_counter() - started
        self._last_at = time.time()
        self.refreshes += 1
        self._cached = self._families(reports=reports)

    def _dora_reports(self) -> list[tuple[str, dict[str, Any]]]:
        now = self.clock.now()
        rows = self.tally.dora_rows
        query = DoraQuery(now=now, window=self.span, environment=self.environment)
        reports = [(_ALL, compute_dora(rows, query))]
        totals: Counter[str] = Counter()
        for (service, environment, _), n in self.tally.deploys.items():
            if environment == self.environment:
                totals[service] += n
        for service, _ in totals.most_common(_MAX_SERVICES):
            service_query = DoraQuery(
                now=now, window=self.span, service=service, environment=self.environment
            )
            reports.append((service, compute_dora(rows, service_query)))
        return reports

    def _error_family(self) -> Metric:
        family = CounterMetricFamily(
            "opsledger_ledger_metrics_errors",
            "Refreshes of the ledger metrics that failed (the last figures are kept)",
        )
        family.add_metric([], float(self._errors))
        return family

    def _families(
        self, *, reports: list[tuple[str, dict[str, Any]]] | None = None, empty: bool = False
    ) -> list[Metric]:
        tally = self.tally
        deploys = CounterMetricFamily(
            "opsledger_deploys",
            "Deploys finished (deploy.finished on the ledger), by final status",
            labels=["service", "environment", "status"],
        )
        rollbacks = CounterMetricFamily(
            "opsledger_deploy_rollbacks",
            "Rollbacks recorded (deploy.rolled_back on the ledger)",
            labels=["service", "environment"],
        )
        runs = CounterMetricFamily(
            "opsledger_pipeline_runs",
            "Pipeline runs finished (pipeline.finished), by status",
            labels=["pipeline", "status"],
        )
        durations = SummaryMetricFamily(
            "opsledger_pipeline_run_duration_seconds",
            "Wall time of finished pipeline runs that recorded one",
            labels=["pipeline"],
        )
        jobs = CounterMetricFamily(
            "opsledger_pipeline_jobs",
            "Pipeline jobs finished (job.finished), by outcome",
            labels=["status"],
        )
        incidents = CounterMetricFamily(
            "opsledger_incidents_opened",
            "Incidents opened (incident.opened), by severity",
            labels=["severity"],
        )
        dora_labels = ["service", "environment", "window"]
        figures = {
            key: GaugeMetricFamily(name, help_text, labels=dora_labels)
            for key, (name, help_text) in DORA_FIGURES.items()
        }
        totals = GaugeMetricFamily(
            "opsledger_dora_totals",
            "The counts behind each DORA ratio over the window",
            labels=[*dora_labels, "total"],
        )
        tiers = GaugeMetricFamily(
            "opsledger_dora_tier",
            "1 for the DORA performance tier of each figure (elite, high, medium, low)",
            labels=[*dora_labels, "metric", "tier"],
        )
        seconds = GaugeMetricFamily(
            "opsledger_ledger_metrics_refresh_seconds",
            "Seconds the last refresh of the ledger metrics took",
        )
        refreshed = GaugeMetricFamily(
            "opsledger_ledger_metrics_refreshed_timestamp_seconds",
            "Unix time of the last successful refresh of the ledger metrics",
        )
        errors = self._error_family()
        families: list[Metric] = [
            deploys,
            rollbacks,
            runs,
            durations,
            jobs,
            incidents,
            *figures.values(),
            totals,
            tiers,
            seconds,
            refreshed,
            errors,
        ]
        if empty:
            errors.samples.clear()
            return families
        for (service, environment, status), n in sorted(tally.deploys.items()):
            deploys.add_metric([service, environment, status], n)
        for (service, environment), n in sorted(tally.rollbacks.items()):
            rollbacks.add_metric([service, environment], n)
        for (pipeline, status), n in sorted(tally.runs.items()):
            runs.add_metric([pipeline, status], n)
        for pipeline, n in sorted(tally.run_timed.items()):
            durations.add_metric([pipeline], n, tally.run_seconds.get(pipeline, 0.0))
        for status, n in sorted(tally.jobs.items()):
            jobs.add_metric([status], n)
        for severity, n in sorted(tally.incidents.items()):
            incidents.add_metric([severity], n)
        for service, report in reports or []:
            labels = [service, self.environment, self.window]
            for key, family in figures.items():
                value = report.get(key)
                if isinstance(value, int | float):
                    family.add_metric(labels, float(value))
            for name, value in sorted((report.get("totals") or {}).items()):
                totals.add_metric([*labels, name], float(value))
            for metric, level in sorted((report.get("tiers") or {}).items()):
                if level:
                    tiers.add_metric([*labels, metric, str(level)], 1.0)
        seconds.add_metric([], self._last_seconds)
        refreshed.add_metric([], self._last_at)
        return families
