"""The script target: hooks called in order with their environment, rollback on failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.pipeline.deploy.helpers import Ledger, bodies, deploy

DIGEST = "sha256:" + "ab" * 32

HOOK = """\
import json, os, sys
hook = sys.argv[1]
keys = ("OPSLEDGER_VERSION", "OPSLEDGER_COLOR", "OPSLEDGER_WEIGHT", "OPSLEDGER_INSTANCE",
        "OPSLEDGER_REASON", "OPSLEDGER_SERVICE", "OPSLEDGER_ENVIRONMENT", "OPSLEDGER_DIGEST",
        "OPSLEDGER_KEY")
with open(os.environ["HOOK_LOG"], "a") as fh:
    seen = {k: os.environ[k] for k in keys if k in os.environ}
    fh.write(json.dumps({"hook": hook, **seen}) + "\\n")
if hook == "health" and os.environ.get("OPSLEDGER_VERSION") == os.environ.get("BAD_VERSION"):
    print("503 from the load balancer")
    sys.exit(3)
"""


def script_deploy(tmp_path: Path, strategy: str, **extra: Any) -> dict[str, Any]:
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    run = [sys.executable, str(hook)]
    return {
        "service": "api",
        "environment": "staging",
        "strategy": strategy,
        "target": {
            "kind": "script",
            "deploy": [*run, "deploy"],
            "switch": [*run, "switch"],
            "health": [*run, "health"],
            "stop": [*run, "stop"],
            "rollback": [*run, "rollback"],
            "env": {"HOOK_LOG": str(tmp_path / "hooks.log"), "BAD_VERSION": "2.0.0"},
        },
        "health": {"timeout": "0.3s", "interval": "0.1s"},
        **extra,
    }


def calls(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "hooks.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [json.loads(line) for line in lines]


def test_blue_green_hooks_in_order_then_rollback(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = script_deploy(tmp_path, "blue-green")
    ok = deploy(ledger, raw, tmp_path, version="1.0.0", digest=DIGEST, state_dir=state_dir)
    assert ok.status == "success", ok.reason
    first = calls(tmp_path)
    assert [(c["hook"], c.get("OPSLEDGER_COLOR"), c.get("OPSLEDGER_WEIGHT")) for c in first] == [
        ("deploy", "blue", None),
        ("health", "blue", None),
        ("switch", "blue", "100"),
        ("health", "blue", None),  # held (window 0): checked once more under traffic
        ("switch", "blue", "100"),
    ]
    assert all(c["OPSLEDGER_SERVICE"] == "api" and c["OPSLEDGER_DIGEST"] == DIGEST for c in first)
    assert not any("OPSLEDGER_KEY" in c for c in first)

    bad = deploy(ledger, raw, tmp_path, version="2.0.0", digest=DIGEST, state_dir=state_dir)
    assert bad.status == "rolled_back"
    assert "health hook exited 3 for green#1: 503 from the load balancer" in bad.reason
    second = calls(tmp_path)
    hooks = [(c["hook"], c.get("OPSLEDGER_COLOR"), c.get("OPSLEDGER_WEIGHT")) for c in second]
    assert hooks[0] == ("deploy", "green", None)
    assert hooks[-3:] == [("switch", "blue", "100"), ("stop", "green", None),
                          ("rollback", None, None)]  # fmt: skip
    assert second[-1]["OPSLEDGER_REASON"] == bad.reason
    assert [b["status"] for b in bodies(ledger, "deploy.finished")] == ["success", "rolled_back"]


def test_canary_switch_weights(ledger: Ledger, state_dir: Path, tmp_path: Path) -> None:
    raw = script_deploy(tmp_path, "canary", canary={"steps": [5, 25], "hold": "0s"})
    assert deploy(ledger, raw, tmp_path, version="1.0.0", digest=DIGEST,
                  state_dir=state_dir).status == "success"  # fmt: skip
    calls(tmp_path)
    ok = deploy(ledger, raw, tmp_path, version="1.1.0", digest=DIGEST, state_dir=state_dir)
    assert ok.status == "success", ok.reason
    switches = [
        (c["OPSLEDGER_COLOR"], c["OPSLEDGER_WEIGHT"])
        for c in calls(tmp_path)
        if c["hook"] == "switch"
    ]
    assert switches == [
        ("green", "5"), ("blue", "95"),
        ("green", "25"), ("blue", "75"),
        ("green", "100"), ("blue", "0"),
        ("green", "100"),
    ]  # fmt: skip


def test_a_failing_deploy_hook_is_a_failure_not_a_rollback(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    raw = script_deploy(tmp_path, "blue-green")
    raw["target"]["deploy"] = [sys.executable, "-c", "import sys; print('quota'); sys.exit(4)"]
    out = deploy(ledger, raw, tmp_path, version="1.0.0", digest=DIGEST, state_dir=state_dir)
    assert out.status == "failure"
    assert out.reason == "deploy hook exited 4: quota"
    finished = bodies(ledger, "deploy.finished")
    assert finished[0]["status"] == "failure" and finished[0]["reason"] == out.reason


def test_one_deploy_at_a_time_per_service_and_environment(
    ledger: Ledger, state_dir: Path, tmp_path: Path
) -> None:
    import fcntl

    raw = script_deploy(tmp_path, "blue-green")
    lock = state_dir / "api" / "staging" / "deploy.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running deploy would
        out = deploy(ledger, raw, tmp_path, version="1.0.0", digest=DIGEST, state_dir=state_dir)
    assert out.status == "failure" and out.tx_ids == ()
    assert out.reason == "another deploy is running for api/staging"
    assert bodies(ledger, "deploy.started") == []


def test_a_cancelled_deploy_rolls_back(ledger: Ledger, state_dir: Path, tmp_path: Path) -> None:
    import threading

    from opsledger.pipeline.deploy import DeployContext, parse_deploy, run_deploy

    cancel = threading.Event()
    cancel.set()
    out = run_deploy(
        parse_deploy(script_deploy(tmp_path, "canary"), "t"),
        DeployContext(
            client=ledger.client,
            signer=ledger.signer,
            version="1.0.0",
            artifact_digest=DIGEST,
            commits=[],
            workdir=tmp_path,
            log=lambda line: None,
            cancel=cancel,
            state_dir=state_dir,
        ),
    )
    assert out.status == "rolled_back" and out.reason == "cancelled"
    # nothing served before: no traffic to move back, the new instance stopped
    assert [c["hook"] for c in calls(tmp_path)] == ["deploy", "stop", "rollback"]
