"""Blue-green, canary and rolling against real local processes behind the real switch.

Each test starts the sample service (examples/pipeline-service/app.py) as processes; the
``state_dir`` fixture stops them all afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline.deploy.helpers import (
    Ledger,
    bodies,
    build_version,
    deploy,
    process_deploy,
    switch_url,
    versions_served,
)

pytestmark = pytest.mark.slow

METRICS = {
    "window": "1s",
    "max_error_rate": 0.1,
    "min_requests": 1,
    "probe": {"path": "/", "rps": 25},
}


def test_blue_green_ships_then_rolls_back_a_failing_health_check(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = process_deploy("blue-green")
    d1 = build_version(tmp_path / "v1", "1.0.0")
    first = deploy(ledger, raw, tmp_path / "v1", version="1.0.0", digest=d1,
                   state_dir=state_dir, commits=["c1"])  # fmt: skip
    assert first.status == "success", first.reason
    url = switch_url(state_dir)
    assert versions_served(url) == {"1.0.0"}

    d2 = build_version(tmp_path / "v2", "2.0.0", fault="health")
    log: list[str] = []
    second = deploy(ledger, raw, tmp_path / "v2", version="2.0.0", digest=d2,
                    state_dir=state_dir, log=log)  # fmt: skip
    assert second.status == "rolled_back"
    assert "/health returned 500 (want 200)" in second.reason
    assert versions_served(url) == {"1.0.0"}  # the old color never stopped serving

    started = bodies(ledger, "deploy.started")
    finished = bodies(ledger, "deploy.finished")
    rolled = ledger.rows("deploy.rolled_back")
    assert [b["version"] for b in started] == ["1.0.0", "2.0.0"]
    assert [(b["version"], b["status"]) for b in finished] == [
        ("1.0.0", "success"),
        ("2.0.0", "rolled_back"),
    ]
    assert finished[0]["commits"] == ["c1"] and finished[0]["digest"] == d1
    assert finished[0]["strategy"] == "blue-green"
    assert len(rolled) == 1
    assert rolled[0]["transaction"]["body"]["deploy"] == second.tx_ids[0]
    assert rolled[0]["transaction"]["body"]["reason"] == second.reason
    assert rolled[0]["transaction"]["refs"] == [second.tx_ids[0]]
    state = json.loads((state_dir / "shop" / "production" / "state.json").read_text())
    assert state["active"]["version"] == "1.0.0" and state["active"]["pool"] == "blue"
    assert len(state["active"]["members"]) == 2

    d3 = build_version(tmp_path / "v3", "3.0.0")
    third = deploy(ledger, raw, tmp_path / "v3", version="3.0.0", digest=d3, state_dir=state_dir)
    assert third.status == "success", third.reason
    assert versions_served(url) == {"3.0.0"}
    state = json.loads((state_dir / "shop" / "production" / "state.json").read_text())
    assert state["active"]["pool"] == "green"


def test_canary_error_rate_gate_rolls_back_at_the_first_step(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = process_deploy(
        "canary",
        canary={"steps": [25, 100], "hold": "1s"},
        health={"metrics": METRICS},
    )
    d1 = build_version(tmp_path / "v1", "1.0.0")
    assert deploy(ledger, raw, tmp_path / "v1", version="1.0.0", digest=d1,
                  state_dir=state_dir).status == "success"  # fmt: skip
    # /health stays green; only the switch sees the 500s on /
    d2 = build_version(tmp_path / "v2", "2.0.0", fault="errors")
    log: list[str] = []
    outcome = deploy(ledger, raw, tmp_path / "v2", version="2.0.0", digest=d2,
                     state_dir=state_dir, log=log)  # fmt: skip
    assert outcome.status == "rolled_back", log
    assert outcome.reason.startswith("canary at 25%: ")
    assert "error rate 1.000" in outcome.reason and "above 0.1" in outcome.reason
    assert any("switch routes: green 25%, blue 75%" in line for line in log)
    assert versions_served(switch_url(state_dir), 20) == {"1.0.0"}


def test_canary_advances_step_by_step_while_healthy(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = process_deploy(
        "canary",
        canary={"steps": [10, 50], "hold": "0.5s"},
        health={"metrics": {**METRICS, "window": "0.5s"}},
    )
    d1 = build_version(tmp_path / "v1", "1.0.0")
    assert deploy(ledger, raw, tmp_path / "v1", version="1.0.0", digest=d1,
                  state_dir=state_dir).status == "success"  # fmt: skip
    d2 = build_version(tmp_path / "v2", "2.0.0")
    log: list[str] = []
    outcome = deploy(ledger, raw, tmp_path / "v2", version="2.0.0", digest=d2,
                     state_dir=state_dir, log=log)  # fmt: skip
    assert outcome.status == "success", outcome.reason
    holds = [line for line in log if line.startswith("canary at")]
    assert holds == [
        "canary at 10%: holding 0.5s",
        "canary at 50%: holding 0.5s",
        "canary at 100%: holding 0.5s",
    ]
    assert versions_served(switch_url(state_dir)) == {"2.0.0"}


def test_rolling_replaces_one_by_one_and_restores_on_a_failed_gate(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = process_deploy("rolling", health={"metrics": {**METRICS, "window": "0.5s"}})
    d1 = build_version(tmp_path / "v1", "1.0.0")
    assert deploy(ledger, raw, tmp_path / "v1", version="1.0.0", digest=d1,
                  state_dir=state_dir).status == "success"  # fmt: skip
    d2 = build_version(tmp_path / "v2", "2.0.0")
    log: list[str] = []
    outcome = deploy(ledger, raw, tmp_path / "v2", version="2.0.0", digest=d2,
                     state_dir=state_dir, log=log)  # fmt: skip
    assert outcome.status == "success", outcome.reason
    # one new instance started and healthy before each old one is stopped
    steps = [line.split(" ")[0] for line in log if line.startswith(("started", "stopped"))]
    assert steps == ["started", "stopped", "started", "stopped"]
    assert versions_served(switch_url(state_dir)) == {"2.0.0"}

    # 3.0.0 passes /health but fails on /: the first replaced instance trips the metric
    # gate, the replaced 2.0.0 instance is started again and the new one stopped
    d3 = build_version(tmp_path / "v3", "3.0.0", fault="errors")
    log.clear()
    outcome = deploy(ledger, raw, tmp_path / "v3", version="3.0.0", digest=d3,
                     state_dir=state_dir, log=log)  # fmt: skip
    assert outcome.status == "rolled_back"
    assert outcome.reason.startswith("instance 1 of 2: ")
    assert "error rate" in outcome.reason
    assert any(line.startswith("started shop 2.0.0 in green") for line in log), log
    assert versions_served(switch_url(state_dir), 20) == {"2.0.0"}
    state = json.loads((state_dir / "shop" / "production" / "state.json").read_text())
    assert state["active"]["version"] == "2.0.0"
    assert len(state["active"]["members"]) == 2


def test_an_artifact_that_is_not_the_digest_is_refused(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    build_version(tmp_path / "v1", "1.0.0")
    other = build_version(tmp_path / "other", "1.0.1")
    outcome = deploy(ledger, process_deploy("blue-green"), tmp_path / "v1", version="1.0.0",
                     digest=other, state_dir=state_dir)  # fmt: skip
    assert outcome.status == "failure"
    assert "not the deployed" in outcome.reason
    assert [b["status"] for b in bodies(ledger, "deploy.finished")] == ["failure"]


def test_instances_of_an_interrupted_deploy_are_stopped(state_dir: Path, tmp_path: Path) -> None:
    from opsledger.pipeline.deploy.config import ProcessSettings
    from opsledger.pipeline.deploy.targets import process

    where = state_dir / "shop" / "production"
    where.mkdir(parents=True)
    pid = process._spawn(["sleep", "60"], tmp_path, {}, where / "logs" / "orphan.log")
    (where / "launched.json").write_text(json.dumps([pid]))
    target = process.ProcessTarget(
        ProcessSettings(command=("true",)),
        service="shop",
        environment="production",
        version="1",
        digest="sha256:" + "0" * 64,
        workdir=tmp_path,
        state_root=state_dir,
        http=None,
        log=lambda line: None,
    )
    assert process.alive(pid)
    target._stop_leftovers()
    assert not process.alive(pid)
    assert not (where / "launched.json").exists()
