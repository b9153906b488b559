"""Metric thresholds: judged on what the switch measured for the new color."""

from __future__ import annotations

import sys

from opsledger.pipeline.deploy.config import MetricSettings
from opsledger.pipeline.deploy.health import check_metrics, run_command_check
from opsledger.pipeline.deploy.switch import PoolStats
from opsledger.pipeline.deploy.targets.base import Member

LIMITS = MetricSettings(window_s=30, max_error_rate=0.02, max_latency_p95_ms=250, min_requests=50)


def test_within_thresholds() -> None:
    assert check_metrics(PoolStats("green", 100, 2, 249.9), LIMITS) is None


def test_error_rate_above() -> None:
    reason = check_metrics(PoolStats("green", 100, 3, 10.0), LIMITS)
    assert reason == "green error rate 0.030 (3 of 100) over 30s is above 0.02"


def test_latency_above() -> None:
    reason = check_metrics(PoolStats("green", 100, 0, 251.0), LIMITS)
    assert reason == "green latency p95 251.0 ms over 30s is above 250 ms"


def test_too_little_traffic_is_no_evidence() -> None:
    reason = check_metrics(PoolStats("canary", 49, 0, 1.0), LIMITS)
    assert reason == "canary served 49 requests in 30s, fewer than the 50 needed to judge it"


def test_command_check_gets_the_instance_and_reports_its_output() -> None:
    member = Member(pool="green", version="2.0.0", label="green:8001", url="http://127.0.0.1:8001")
    script = (
        "import os, sys; print(os.environ['OPSLEDGER_URL'], os.environ['OPSLEDGER_COLOR'],"
        " os.environ['OPSLEDGER_VERSION']); sys.exit(0 if 'OPSLEDGER_KEY' not in os.environ else 9)"
    )
    assert run_command_check([sys.executable, "-c", script], member, None, 10) is None
    failing = [sys.executable, "-c", "print('db down'); raise SystemExit(2)"]
    reason = run_command_check(failing, member, None, 10)
    assert reason == f"health command {sys.executable} exited 2 for green:8001: db down"
