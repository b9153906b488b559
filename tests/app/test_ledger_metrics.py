"""Delivery metrics from a real ledger: a known history is recorded in a real home, then
read back as Prometheus samples, by the collector itself and by scraping the API app's
``/metrics``. Every DORA figure is checked against a value worked out by hand (below) and
against ``opsledger dora``'s own report over the same ledger.

The history (hours after T0, which is 12 h before the test runs):

    0.0  code.pushed c1 (committed T0-2h), c2 (committed T0-1h)
    0.4  job.finished r1/compile success       0.45 pipeline.finished r1 success, 90 s
    0.6  job.finished r2/unit failure          0.65 pipeline.finished r2 failure, 30 s
    1.0  deploy.started shop v1 production     2.0  deploy.finished success [c1]
    1.5  deploy.finished shop v1 staging success (no start)
    3.0  deploy.started shop v2 production     3.5  deploy.finished rolled_back [c2]
    3.5  deploy.rolled_back naming shop v2's start
    4.0  deploy.started api v1 production      5.0  deploy.finished success [c3] (c3 never pushed)
    6.0  incident.opened INC-1 SEV2 service api    8.0  incident.resolved INC-1

By hand, over 30 days, production, all services: deployments 3 (2 successful, shop v2
rolled back), so frequency = 2/30 per day and change failure rate = 1/3; lead time: c1
shipped at 2.0 after its commit at -2.0 = 4 h (c2 only went out in a rolled-back deploy,
c3 has no push): median 4.0; time to restore: 8.0 - 6.0 = 2 h; failed deployment recovery:
shop v2 started 3.0, rolled back 3.5 = 0.5 h; rework 0/2 = 0; defect escape: shop v2's
digest escaped, nothing caught earlier = 1/1. For shop alone: 2 deployments, 1 successful,
frequency 1/30, failure rate 1/2, lead time 4 h, and no time to restore (INC-1 is api's):
that gauge must be absent, not 0.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from opsledger.api import create_app
from opsledger.app import Home
from opsledger.app.dora import dora_report
from opsledger.app.ledger_metrics import LedgerMetricsCollector
from opsledger.client.base import LedgerClient, Signer
from opsledger.client.local import LocalClient
from opsledger.core import FixedClock, Subject, format_ts

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient` is deprecated"
    )
    from fastapi.testclient import TestClient

HOUR = 3600.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _digest(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def _deploy(
    service: str, env: str, version: str, status: str, commits: list[str]
) -> dict[str, Any]:
    return {
        "service": service,
        "environment": env,
        "version": version,
        "digest": _digest(f"{service}-{version}"),
        "strategy": "blue-green",
        "status": status,
        "commits": commits,
    }


class History:
    """Writes transactions at chosen times (a FixedClock) with the admin's key."""

    def __init__(self, home: Home, client: LedgerClient, t0: dt.datetime) -> None:
        self.client = client
        self.t0 = t0
        self.clock = FixedClock(t0)
        admin = home.config().admin
        self.signer = Signer(admin, home.load_key(admin), self.clock, ledger=home.ledger_id())
        # nonces must keep growing past the ones init signed with the real clock
        self.signer.bump_past(int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000))

    def at(self, hours: float, tx_type: str, body: dict[str, Any], kind: str = "service") -> str:
        target = self.t0 + dt.timedelta(hours=hours)
        self.clock.advance((target - self.clock.now()).total_seconds())
        subject = Subject(kind, str(body.get("service") or body.get("id") or "shop"))
        receipt = self.client.submit(self.signer.sign(tx_type, subject, body))
        return str(receipt.tx_id)

    def ts(self, hours: float) -> str:
        return format_ts(self.t0 + dt.timedelta(hours=hours))


def record_history(history: History) -> None:
    h = history
    commits = [
        {"id": "c1", "author": "dev", "time": h.ts(-2)},
        {"id": "c2", "author": "dev", "time": h.ts(-1)},
    ]
    h.at(0.0, "code.pushed", {"repo": "shop", "ref": "refs/heads/main", "commits": commits})
    digest = _digest("pipeline")
    h.at(0.4, "job.finished", {"run": "r1", "job": "compile", "status": "success",
                               "exit_code": 0, "outcome": "success"})  # fmt: skip
    h.at(0.45, "pipeline.finished", {"pipeline": "shop", "run": "r1", "digest": digest,
                                     "status": "success", "jobs": {"compile": "success"},
                                     "duration_ms": 90_000})  # fmt: skip
    h.at(0.6, "job.finished", {"run": "r2", "job": "unit", "status": "failure",
                               "exit_code": 1, "outcome": "failure"})  # fmt: skip
    h.at(0.65, "pipeline.finished", {"pipeline": "shop", "run": "r2", "digest": digest,
                                     "status": "failure", "jobs": {"unit": "failure"},
                                     "duration_ms": 30_000})  # fmt: skip
    start = h.at(1.0, "deploy.started", _deploy("shop", "production", "v1", "started", ["c1"]))
    h.at(1.5, "deploy.finished", _deploy("shop", "staging", "v1", "success", ["c1"]))
    h.at(2.0, "deploy.finished",
         {**_deploy("shop", "production", "v1", "success", ["c1"]), "deploy": start})  # fmt: skip
    start = h.at(3.0, "deploy.started", _deploy("shop", "production", "v2", "started", ["c2"]))
    rolled_back = _deploy("shop", "production", "v2", "rolled_back", ["c2"])
    h.at(3.5, "deploy.finished", {**rolled_back, "deploy": start})
    h.at(3.5, "deploy.rolled_back",
         {**_deploy("shop", "production", "v2", "rolled_back", ["c2"]), "deploy": start,
          "reason": "health gate failed"})  # fmt: skip
    start = h.at(4.0, "deploy.started", _deploy("api", "production", "v1", "started", ["c3"]))
    h.at(5.0, "deploy.finished",
         {**_deploy("api", "production", "v1", "success", ["c3"]), "deploy": start})  # fmt: skip
    h.at(6.0, "incident.opened",
         {"id": "INC-1", "severity": "SEV2", "title": "api errors", "service": "api"},
         kind="incident")  # fmt: skip
    h.at(8.0, "incident.resolved", {"id": "INC-1", "summary": "fixed"}, kind="incident")


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR", "OPSLEDGER_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "h")
    home.init(builtin_contracts=False)
    return home


@pytest.fixture
def t0() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=12)


@pytest.fixture
def client(home: Home) -> Iterator[LocalClient]:
    client = LocalClient(home.open_node())
    yield client
    client.close()


@pytest.fixture
def history(home: Home, client: LocalClient, t0: dt.datetime) -> History:
    history = History(home, client, t0)
    record_history(history)
    return history


def samples_of(collector_output: Any) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector_output
        for s in family.samples
    }


def scrape(text: str) -> Samples:
    return samples_of(text_string_to_metric_families(text))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def dora(samples: Samples, figure: str, service: str = "all") -> float | None:
    return value(
        samples,
        f"opsledger_dora_{figure}",
        service=service,
        environment="production",
        window="30d",
    )


def check_history(samples: Samples) -> None:
    deploys = "opsledger_deploys_total"
    assert value(samples, deploys, service="shop", environment="production", status="success") == 1
    assert (
        value(samples, deploys, service="shop", environment="production", status="rolled_back") == 1
    )
    assert value(samples, deploys, service="shop", environment="staging", status="success") == 1
    assert value(samples, deploys, service="api", environment="production", status="success") == 1
    rollbacks = "opsledger_deploy_rollbacks_total"
    assert value(samples, rollbacks, service="shop", environment="production") == 1
    assert value(samples, "opsledger_pipeline_runs_total", pipeline="shop", status="success") == 1
    assert value(samples, "opsledger_pipeline_runs_total", pipeline="shop", status="failure") == 1
    assert value(samples, "opsledger_pipeline_run_duration_seconds_sum", pipeline="shop") == 120.0
    assert value(samples, "opsledger_pipeline_run_duration_seconds_count", pipeline="shop") == 2
    assert value(samples, "opsledger_pipeline_jobs_total", status="success") == 1
    assert value(samples, "opsledger_pipeline_jobs_total", status="failure") == 1
    assert value(samples, "opsledger_incidents_opened_total", severity="SEV2") == 1

    assert dora(samples, "deployment_frequency_per_day") == pytest.approx(2 / 30)
    assert dora(samples, "change_failure_rate") == pytest.approx(1 / 3)
    assert dora(samples, "lead_time_hours") == pytest.approx(4.0)
    assert dora(samples, "time_to_restore_hours") == pytest.approx(2.0)
    assert dora(samples, "failed_deployment_recovery_time_hours") == pytest.approx(0.5)
    assert dora(samples, "deployment_rework_rate") == 0.0
    assert dora(samples, "defect_escape_rate") == 1.0
    totals = "opsledger_dora_totals"
    common = {"service": "all", "environment": "production", "window": "30d"}
    assert value(samples, totals, **common, total="deployments") == 3
    assert value(samples, totals, **common, total="failed_deployments") == 1
    assert value(samples, totals, **common, total="commits_without_push") == 1
    tier = "opsledger_dora_tier"
    assert value(samples, tier, **common, metric="lead_time", tier="elite") == 1
    assert value(samples, tier, **common, metric="change_failure_rate", tier="low") == 1

    assert dora(samples, "deployment_frequency_per_day", "shop") == pytest.approx(1 / 30)
    assert dora(samples, "change_failure_rate", "shop") == pytest.approx(1 / 2)
    assert dora(samples, "lead_time_hours", "shop") == pytest.approx(4.0)
    assert dora(samples, "time_to_restore_hours", "shop") is None  # absent, not 0
    assert dora(samples, "deployment_frequency_per_day", "api") == pytest.approx(1 / 30)


def test_collector_exports_the_history_figured_by_hand(
    history: History, client: LocalClient, t0: dt.datetime
) -> None:
    now = FixedClock(t0 + dt.timedelta(hours=10))
    collector = LedgerMetricsCollector(client, clock=now)
    samples = samples_of(collector.collect())
    check_history(samples)
    # the CLI's report over the same ledger says the same
    report = dora_report(client, window="30d", until=format_ts(now.now()))
    for key in ("deployment_frequency_per_day", "lead_time_hours", "change_failure_rate"):
        assert dora(samples, key) == pytest.approx(report[key])


def test_api_metrics_endpoint_serves_ledger_metrics(history: History, client: LocalClient) -> None:
    app = create_app(client, registry=CollectorRegistry())
    with TestClient(app) as api:
        response = api.get("/metrics")
    assert response.status_code == 200
    samples = scrape(response.text)
    check_history(samples)  # now = real time, 12 h after T0: same figures
    assert value(samples, "opsledger_ledger_metrics_errors_total") == 0
    assert (value(samples, "opsledger_ledger_metrics_refreshed_timestamp_seconds") or 0) > 0


def test_cached_between_refreshes_and_read_incrementally(
    history: History, client: LocalClient, t0: dt.datetime
) -> None:
    ticks = [0.0]
    collector = LedgerMetricsCollector(
        client, refresh=30.0, clock=FixedClock(t0 + dt.timedelta(hours=10)),
        monotonic=lambda: ticks[0],
    )  # fmt: skip
    key = ("opsledger_deploys_total",
           (("environment", "production"), ("service", "api"), ("status", "success")))  # fmt: skip
    assert samples_of(collector.collect())[key] == 1
    rows_before = len(collector.tally.dora_rows)
    history.at(9.0, "deploy.finished", _deploy("api", "production", "v2", "success", []))
    ticks[0] = 29.0
    assert samples_of(collector.collect())[key] == 1  # cached: at most every 30 s
    assert collector.refreshes == 1
    ticks[0] = 30.0
    assert samples_of(collector.collect())[key] == 2
    assert collector.refreshes == 2
    assert len(collector.tally.dora_rows) == rows_before + 1  # only the new row was read


class _BrokenClient:
    """A ledger that answers once, then fails (a remote node that went away)."""

    def __init__(self, inner: LedgerClient) -> None:
        self.inner = inner
        self.broken = False

    def list_transactions(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        if self.broken:
            raise ConnectionError("ledger unreachable")
        return self.inner.list_transactions(filters)


def test_a_failing_ledger_keeps_the_last_figures_and_counts_the_error(
    history: History, client: LocalClient, t0: dt.datetime
) -> None:
    broken = _BrokenClient(client)
    ticks = [0.0]
    collector = LedgerMetricsCollector(
        broken,  # type: ignore[arg-type]
        refresh=1.0, clock=FixedClock(t0 + dt.timedelta(hours=10)), monotonic=lambda: ticks[0],
    )  # fmt: skip
    first = samples_of(collector.collect())
    assert value(first, "opsledger_ledger_metrics_errors_total") == 0
    broken.broken = True
    ticks[0] = 5.0
    second = samples_of(collector.collect())
    assert value(second, "opsledger_ledger_metrics_errors_total") == 1
    check_history(second)


def test_an_empty_ledger_exports_no_dora_figures(client: LocalClient) -> None:
    samples = samples_of(LedgerMetricsCollector(client).collect())
    assert not [name for name, _ in samples if name.startswith("opsledger_dora_lead")]
    assert value(samples, "opsledger_dora_totals", service="all", environment="production",
                 window="30d", total="deployments") == 0  # fmt: skip
    registry = CollectorRegistry()
    registry.register(LedgerMetricsCollector(client))  # describe() names do not collide
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(LedgerMetricsCollector(client))
