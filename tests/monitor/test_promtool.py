"""The default rules under a real Prometheus's tools, and the same scenarios in-process.

Each scenario is written once in promtool's unit-test notation and run twice: by
``promtool test rules`` (Debian ``prometheus``) against the exported rule file, and by
our in-process evaluator over the same samples. Both must fire exactly the expected
alerts, which shows the rules mean the same thing in both places.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsledger.monitor.promql import parse_duration
from opsledger.monitor.rules import (
    DEFAULT_RULES,
    AlertEvaluator,
    export_rule_file,
    load_rule_groups,
)
from opsledger.monitor.series import SeriesStore

INTERVAL = 15.0
BUCKET = "opsledger_monitor_rpc_latency_seconds_bucket"

SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "a node 10 blocks behind for over a minute",
        "series": {'opsledger_monitor_evm_head_lag_blocks{chain="c",target="a"}': "0 0 10x10"},
        "eval_time": "2m",
        "alert": "NodeHeadLag",
        "expect": [{"chain": "c", "target": "a", "severity": "critical"}],
    },
    {
        "name": "lag shorter than its for does not fire",
        "series": {'opsledger_monitor_evm_head_lag_blocks{chain="c",target="a"}': "0 0 10 10 0x6"},
        "eval_time": "1m",
        "alert": "NodeHeadLag",
        "expect": [],
    },
    {
        "name": "a halted chain",
        "series": {
            'opsledger_monitor_evm_head_age_seconds{chain="c",target="a"}': "0+15x20",
            'opsledger_monitor_evm_head_age_seconds{chain="c",target="b"}': "0+15x20",
        },
        "eval_time": "4m",
        "alert": "ChainHalted",
        "expect": [{"chain": "c", "severity": "critical"}],
    },
    {
        "name": "one live node means the chain is not halted",
        "series": {
            'opsledger_monitor_evm_head_age_seconds{chain="c",target="a"}': "0+15x20",
            'opsledger_monitor_evm_head_age_seconds{chain="c",target="b"}': "0x20",
        },
        "eval_time": "4m",
        "alert": "ChainHalted",
        "expect": [],
    },
    {
        "name": "too few peers",
        "series": {
            'opsledger_monitor_evm_peers{chain="c",target="a"}': "3x50",
            'opsledger_monitor_evm_min_peers{chain="c",target="a"}': "10x50",
            'opsledger_monitor_evm_peers{chain="c",target="b"}': "30x50",
            'opsledger_monitor_evm_min_peers{chain="c",target="b"}': "10x50",
        },
        "eval_time": "11m",
        "alert": "PeerCountLow",
        "expect": [{"chain": "c", "target": "a", "severity": "warning"}],
    },
    {
        "name": "slow RPC: p95 above 500 ms",
        "series": {
            f'{BUCKET}{{chain="c",le="0.1",target="a"}}': "0+1x60",
            f'{BUCKET}{{chain="c",le="1.0",target="a"}}': "0+10x60",
            f'{BUCKET}{{chain="c",le="+Inf",target="a"}}': "0+10x60",
        },
        "eval_time": "12m",
        "alert": "RPCLatencyHigh",
        "expect": [{"chain": "c", "target": "a", "severity": "warning"}],
    },
    {
        "name": "probe errors above 20%",
        "series": {
            'opsledger_monitor_probe_errors_total{kind="http",target="w"}': "0+1x60",
            'opsledger_monitor_probes_total{kind="http",target="w"}': "0+2x60",
        },
        "eval_time": "12m",
        "alert": "ProbeErrorRate",
        "expect": [{"kind": "http", "target": "w", "severity": "warning"}],
    },
    {
        "name": "certificate expiring in a week",
        "series": {'opsledger_monitor_tls_expiry_seconds{target="site"}': "604800x5"},
        "eval_time": "1m",
        "alert": "CertificateExpiring",
        "expect": [{"target": "site", "severity": "warning"}],
    },
]


def expand(notation: str) -> list[float | None]:
    """promtool's ``a+bxn`` / ``axn`` / ``_`` series notation."""
    out: list[float | None] = []
    for part in notation.split():
        if part == "_":
            out.append(None)
            continue
        if "x" not in part:
            out.append(float(part))
            continue
        start_step, count = part.split("x")
        if "+" in start_step[1:] or "-" in start_step[1:]:
            sign = "+" if "+" in start_step[1:] else "-"
            start, step = start_step.rsplit(sign, 1)
            delta = float(step) * (1 if sign == "+" else -1)
        else:
            start, delta = start_step, 0.0
        out.extend(float(start) + delta * i for i in range(int(count) + 1))
    return out


def selector(series: str) -> tuple[str, dict[str, str]]:
    name, _, rest = series.partition("{")
    pairs = (pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
    labels = {key: value.strip('"') for key, value in pairs}
    return name, labels


def in_process_alerts(scenario: dict[str, Any]) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(labels without alertname, rendered annotations) of every alert firing at the end."""
    rules = [r for r in load_rule_groups(DEFAULT_RULES) if r.alert == scenario["alert"]]
    store = SeriesStore()
    expanded = {s: expand(v) for s, v in scenario["series"].items()}
    for series in expanded:
        name, _ = selector(series)
        store.describe(name, "gauge", name)
    evaluator = AlertEvaluator(rules)
    end = parse_duration(scenario["eval_time"])
    step = 0
    while step * INTERVAL <= end:
        at = step * INTERVAL
        for series, values in expanded.items():
            if step < len(values) and values[step] is not None:
                name, labels = selector(series)
                store.set(name, labels, values[step] or 0.0, at)
        evaluator.evaluate(store, at)
        step += 1
    firing = [
        ({k: v for k, v in alert.labels if k != "alertname"}, alert.annotations())
        for alert in evaluator.firing()
    ]
    return sorted(firing, key=lambda pair: sorted(pair[0].items()))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_in_process_evaluation_fires_the_expected_alerts(scenario: dict[str, Any]) -> None:
    expected = sorted(scenario["expect"], key=lambda labels: sorted(labels.items()))
    assert [labels for labels, _ in in_process_alerts(scenario)] == expected


def test_promtool_accepts_the_exported_rules_and_agrees_on_every_scenario(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run `make setup` (installs Debian's prometheus)"
    rules = tmp_path / "rules.yml"
    rules.write_text(export_rule_file(load_rule_groups(DEFAULT_RULES)))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = []
    for scenario in SCENARIOS:
        tests.append(
            {
                "interval": "15s",
                "input_series": [
                    {"series": series, "values": values}
                    for series, values in scenario["series"].items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": scenario["eval_time"],
                        "alertname": scenario["alert"],
                        # our rendering of the annotations must match Prometheus's too
                        "exp_alerts": [
                            {"exp_labels": labels, "exp_annotations": annotations}
                            for labels, annotations in in_process_alerts(scenario)
                        ],
                    }
                ],
            }
        )
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
