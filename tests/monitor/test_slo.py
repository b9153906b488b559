"""SLOs: config, burn-rate rules (in-process and under promtool), ledger evidence that
the ``sla`` contract judges, and ``opsledger slo report``."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.app.slo import slo_report
from opsledger.cli import slo as slo_cli
from opsledger.cli._state import Consoles, State
from opsledger.client.base import Signer, submit_signed
from opsledger.client.local import LocalClient
from opsledger.core import ConfigError, Subject
from opsledger.ledger import ContractRunner
from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.promql import parse_duration
from opsledger.monitor.rules import AlertEvaluator, export_rule_file, load_rule_groups
from opsledger.monitor.series import SeriesStore
from opsledger.monitor.service import MonitorService, build_rules
from opsledger.monitor.slo import SloTracker, budget_figures, slo_rule_groups

from .test_promtool import expand, selector

T0 = 1_796_083_200.0  # 2026-12-01T00:00:00Z: a clean hour boundary


def config(slos: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "targets": [
            {"name": "node-a", "kind": "evm", "url": "http://127.0.0.1:9", "component": "rpc"},
            {"name": "node-b", "kind": "evm", "url": "http://127.0.0.1:8", "component": "rpc"},
        ],
        "slos": slos,
    }


AVAILABILITY = {"name": "rpc-availability", "target": "rpc", "objective": 99.9, "service": "rpc"}
LATENCY = {"name": "rpc-latency", "target": "node-a", "sli": "latency", "threshold_ms": 250}


@pytest.mark.parametrize(
    ("slo", "key", "reason"),
    [
        ({"name": "x", "target": "nope"}, "monitor.slos[0].target", "neither a target"),
        ({"name": "x", "target": "rpc", "objective": 100}, "monitor.slos[0].objective", "below"),
        ({"name": "x", "target": "rpc", "sli": "latency"}, "monitor.slos[0].threshold_ms", "ms"),
        ({"name": "x", "target": "rpc", "window": "soon"}, "monitor.slos[0].window", "duration"),
        ({"name": "x", "target": "rpc", "budget": 1}, "monitor.slos[0].budget", "unknown"),
    ],
)
def test_bad_slo_config_names_the_key(slo: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        parse_monitor_config(config([slo]))
    assert caught.value.details.get("key") == key


def test_budget_figures() -> None:
    assert budget_figures(100_000, 99_950, 99.9) == {
        "total": 100_000,
        "good": 99_950,
        "bad": 50,
        "availability": 99.95,
        "nines": 3.3,
        "objective": 99.9,
        "budget_allowed": 100.0,
        "budget_left_percent": 50.0,
        "met": True,
    }
    missed = budget_figures(1000, 990, 99.9)
    assert (missed["met"], missed["budget_left_percent"], missed["nines"]) == (False, -900.0, 2.0)
    assert budget_figures(10, 10, 99.9)["nines"] is None


def test_tracker_reports_disjoint_aligned_windows() -> None:
    (slo,) = parse_monitor_config(config([LATENCY])).slos
    tracker = SloTracker([slo], vantage="eu")
    for i in range(10):  # one slow probe in ten
        tracker.observe(slo, i != 3, 900.0 if i == 3 else 20.0, T0 + 60 * i)
    assert tracker.due(T0 + 3599) == []
    ((_, body),) = tracker.due(T0 + 3600 + 5)
    assert body["window_start"] == "2026-12-01T00:00:00.000Z"
    assert body["window_end"] == "2026-12-01T01:00:00.000Z"
    assert (body["total"], body["good"], body["slo"], body["source"]) == (
        10,
        9,
        "rpc-latency",
        "opsledger-monitor/eu",
    )
    assert body["latency_p99_ms"] == 900.0 and body["latency_p95_ms"] == 900.0
    tracker.observe(slo, True, 10.0, T0 + 3700)
    ((_, partial),) = tracker.due(T0 + 3800, final=True)
    assert partial["window_start"] == "2026-12-01T01:00:00.000Z"
    assert partial["window_end"] == "2026-12-01T01:03:20.000Z"
    assert partial["total"] == 1


# -- the burn-rate rules, in-process and under promtool --

EVENTS = 'opsledger_monitor_slo_events_total{slo="rpc-availability"}'
GOOD = 'opsledger_monitor_slo_good_total{slo="rpc-availability"}'
# 2 probes per 15 s; an hour of success, then every probe fails for 10 minutes
BURN = {EVENTS: "0+2x240 482+2x40", GOOD: "0+2x240 480x40"}
CALM = {EVENTS: "0+2x280", GOOD: "0+2x280"}
SCENARIOS = [
    ("fast burn pages", BURN, "70m", "SLOBurnRateCritical", 1),
    ("no burn, no page", CALM, "70m", "SLOBurnRateCritical", 0),
]


def slo_rules() -> list[Any]:
    slos = parse_monitor_config(config([AVAILABILITY])).slos
    return load_rule_groups(slo_rule_groups(slos))


def in_process(
    series: dict[str, str], eval_time: str, alert: str, *, annotations: bool = False
) -> list[dict[str, Any]]:
    store = SeriesStore()
    store.describe("opsledger_monitor_slo_events_total", "counter", "e")
    store.describe("opsledger_monitor_slo_good_total", "counter", "g")
    evaluator = AlertEvaluator([r for r in slo_rules() if r.alert == alert])
    expanded = {s: expand(v) for s, v in series.items()}
    step, end = 0, parse_duration(eval_time)
    while step * 15.0 <= end:
        for name_labels, values in expanded.items():
            value = values[step] if step < len(values) else None
            if value is not None:
                name, labels = selector(name_labels)
                store.set(name, labels, value, step * 15.0)
        evaluator.evaluate(store, step * 15.0)
        step += 1
    if annotations:
        return [
            {
                "exp_labels": {k: v for k, v in a.labels if k != "alertname"},
                "exp_annotations": a.annotations(),
            }
            for a in evaluator.firing()
        ]
    return [{k: v for k, v in a.labels if k != "alertname"} for a in evaluator.firing()]


@pytest.mark.parametrize(("name", "series", "at", "alert", "count"), SCENARIOS)
def test_burn_rate_alerts_in_process(
    name: str, series: dict[str, str], at: str, alert: str, count: int
) -> None:
    firing = in_process(series, at, alert)
    assert len(firing) == count, name
    if count:
        assert firing == [{"slo": "rpc-availability", "severity": "critical"}]


def test_promtool_agrees_on_the_burn_rate_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run `make setup` (installs Debian's prometheus)"
    rules = tmp_path / "slo.yml"
    rules.write_text(export_rule_file(slo_rules()))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = [
        {
            "interval": "15s",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    # the rendered value must match Prometheus's to the last digit
                    "exp_alerts": in_process(series, at, alert, annotations=True),
                }
            ],
        }
        for _, series, at, alert, _ in SCENARIOS
    ]
    unit = tmp_path / "tests.yml"
    unit.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "15s", "tests": tests})
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_slo_rules_join_the_monitor_rules() -> None:
    names = [r.alert for r in build_rules(parse_monitor_config(config([AVAILABILITY, LATENCY])))]
    assert names.count("SLOBurnRateCritical") == 2 and names.count("SLOBurnRateWarning") == 2


# -- end to end: probes -> slo.reported -> the sla contract -> sla.violation --


class DirectRecorder:
    """Submits at once, so the test can wait on the contract runner deterministically.
    It signs as the node, like the contract runner beside it: a nonce collision between
    the two is re-signed, as every recorder does (``submit_signed``)."""

    def __init__(self, client: LocalClient, signer: Signer) -> None:
        self.client = client
        self.signer = signer

    def record(
        self, tx_type: str, subject: Subject, body: dict[str, Any], refs: Sequence[str] = ()
    ) -> None:
        submit_signed(
            self.client, self.signer, self.signer.sign(tx_type, subject, body, list(refs))
        )

    def flush(self, timeout: float = 10.0) -> None:
        return None

    def close(self) -> None:
        return None


def test_missed_objective_becomes_an_sla_violation_and_shows_in_the_report(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "h")
    home.init(admin="alice")  # deploys the built-in sla contract (service: rpc, 99.9%)
    settings = parse_monitor_config(config([AVAILABILITY]))
    node = home.open_node()
    try:
        client = LocalClient(node)
        node_actor = home.config().node
        signer = Signer(node_actor, home.load_key(node_actor), ledger=home.signer().ledger)
        now = [T0]
        service = MonitorService(
            settings,
            rules=build_rules(settings),
            recorder=DirectRecorder(client, signer),
            clock=lambda: now[0],
        )
        a, b = settings.targets
        # first hour: perfect; second hour: node-b fails 10 of its 60 probes
        for hour in range(2):
            for minute in range(60):
                at = T0 + hour * 3600 + minute * 60
                service.count_slos(a, True, 0.02, at)
                service.count_slos(b, not (hour == 1 and minute < 10), 0.02, at)
            now[0] = T0 + (hour + 1) * 3600 + 1
            assert service.report_slos() == 1
        runner = next(s for s in node.services if isinstance(s, ContractRunner))
        assert runner.wait_idle()

        reports = client.list_transactions({"type": "slo.reported"})
        assert [(r["transaction"]["body"]["good"], r["transaction"]["actor"]) for r in reports] == [
            (120, node_actor),
            (110, node_actor),
        ]
        violations = client.list_transactions({"type": "sla.violation"})
        assert len(violations) == 1
        violation = violations[0]["transaction"]["body"]
        assert violation["period"] == "2026-12-01T01:00:00.000Z/2026-12-01T02:00:00.000Z"
        assert violation["objective"] == "availability"

        (row,) = slo_report(client, settings.slos, "2026-12-01")
        assert (row["total"], row["good"], row["reports"], row["met"]) == (240, 230, 2, False)
        assert row["availability"] == 95.8333 and row["nines"] == 1.38
        node.verify()
    finally:
        node.close()

    config_file = tmp_path / "monitor.yaml"
    config_file.write_text(yaml.safe_dump({"monitor": config([AVAILABILITY])}))
    result = cli(home.path, "report", "--config", str(config_file), "--period", "2026-12", "--json")
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert (line["slo"], line["budget_left_percent"], line["met"]) == (
        "rpc-availability",
        -999.0,  # 10 bad of 240 against 0.24 allowed: overspent 41x, shown capped
        False,
    )
    table = cli(home.path, "report", "--config", str(config_file), "--period", "2026-12")
    assert table.exit_code == 0, table.output
    assert "rpc-availability" in table.stdout and "missed" in table.stdout


def cli(home: Path, *args: str) -> Any:
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = State(home_path=home, verbose=False, consoles=Consoles.default())

    slo_cli.register(app)
    return CliRunner().invoke(app, ["slo", *args])
