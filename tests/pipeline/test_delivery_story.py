"""The delivery story of issue 4 end to end, through ``opsledger pipeline run``:

examples/pipeline-service/pipeline.yaml builds the sample service, tests it, scans it with
bandit and requests a release; the deploy to the protected production is refused until
two release managers approved that exact digest; then blue-green with the ``process``
target ships 1.0.0. Version 2.0.0, whose health check fails, is deployed the same way and
rolled back automatically while 1.0.0 keeps serving. Both are on the ledger and in
``opsledger dora``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from opsledger.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline-service"


class Story:
    def __init__(self, home: Path, project: Path) -> None:
        self.home, self.project = home, project
        self.runner = CliRunner()

    def cli(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(app, ["--home", str(self.home), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
        return result.stdout + result.stderr

    def push(self, commit: str, time: str) -> None:
        body = {
            "repo": "shop",
            "ref": "refs/heads/main",
            "commits": [{"id": commit, "author": "dev", "time": time}],
        }
        self.cli("record", "code.pushed", "--subject", "repo:shop", "--as", "dev",
                 "--body", json.dumps(body))  # fmt: skip

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256((self.project / "app.py").read_bytes()).hexdigest()

    def approve(self, release: str) -> None:
        d = self.digest()
        for manager in ("bob", "carol"):
            self.cli("record", "approval.granted", "--subject", f"artifact:{d}", "--as", manager,
                     "--field", f"digest={d}", "--field", f"release={release}")  # fmt: skip

    def run_pipeline(self, *args: str, code: int) -> str:
        result = self.runner.invoke(
            app,
            [
                "--home",
                str(self.home),
                "pipeline",
                "run",
                str(self.project / "pipeline.yaml"),
                *args,
            ],
        )
        output = result.stdout + result.stderr
        if result.exit_code != code:  # say why: the failed jobs' logs
            run = output.split()[1].rstrip(":")
            logs = [self.cli("pipeline", "logs", run, job) for job in ("unit", "scan", "request")]
            raise AssertionError(f"exit {result.exit_code}\n{output}\n" + "\n".join(logs))
        return output

    def status(self) -> dict[str, object]:
        out = self.cli("deploy", "status", "--service", "shop", "--env", "production", "--json")
        return dict(json.loads(out.splitlines()[0]))

    def served(self, count: int = 10) -> set[str]:
        url = str(self.status()["switch"]["url"])  # type: ignore[index]
        with httpx.Client(timeout=5.0) as client:
            return {str(client.get(url + "/").json()["version"]) for _ in range(count)}

    def log(self, tx_type: str) -> list[dict[str, object]]:
        out = self.cli("log", "--type", tx_type, "--json")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Story]:
    for tool in ("bandit", "opsledger"):
        if not (Path(sys.executable).parent / tool).exists():
            raise RuntimeError(f"{tool} is not installed next to {sys.executable}")
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    home = tmp_path / "home"
    # the pipeline's steps call `opsledger`, `python` and `bandit` from the venv
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPSLEDGER_HOME", str(home))
    story = Story(home, project)
    story.cli("init", "--admin", "alice")
    story.cli("keys", "new", "dev", "--role", "developer")
    story.cli("keys", "new", "bob", "--role", "release-manager")
    story.cli("keys", "new", "carol", "--role", "release-manager")
    try:
        yield story
    finally:
        story.cli("deploy", "down", "--service", "shop", "--env", "production")


@pytest.mark.slow
def test_delivery_story(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.0.0: built, tested, scanned, release requested; production is protected
    monkeypatch.setenv("GIT_COMMIT", "9f1c2e7")
    story.push("9f1c2e7", "2026-11-21T09:00:00Z")
    refused = story.run_pipeline(code=1)
    assert "production is protected" in refused
    assert "0 of 2 approvals" in refused
    assert story.log("deploy.*") == []  # a refused deploy records nothing
    for tx_type in ("build.finished", "test.finished", "scan.finished", "release.requested"):
        assert story.log(tx_type), f"no {tx_type}"

    story.approve("shop-1.0.0")
    story.run_pipeline(code=0)
    assert story.served() == {"1.0.0"}
    v1 = story.digest()

    # 2.0.0 fails its health check in production: rolled back, 1.0.0 never stops serving
    app_py = story.project / "app.py"
    app_py.write_text(
        app_py.read_text()
        .replace('VERSION = "1.0.0"', 'VERSION = "2.0.0"')
        .replace('FAULT = "none"', 'FAULT = "health"')
    )
    monkeypatch.setenv("GIT_COMMIT", "a11ce55")
    story.push("a11ce55", "2026-11-21T10:00:00Z")
    story.approve("shop-2.0.0")
    rolled = story.run_pipeline("--var", "version=2.0.0", code=1)
    assert "deploy rolled_back: not healthy after 5s" in rolled
    assert "/health returned 500 (want 200)" in rolled
    assert story.served() == {"1.0.0"}
    assert story.status()["active"]["digest"] == v1  # type: ignore[index]

    # both on the ledger
    finished = [e["transaction"]["body"] for e in story.log("deploy.finished")]  # type: ignore[index]
    assert [(b["version"], b["status"], b["strategy"]) for b in finished] == [
        ("1.0.0", "success", "blue-green"),
        ("2.0.0", "rolled_back", "blue-green"),
    ]
    assert [b["commits"] for b in finished] == [["9f1c2e7"], ["a11ce55"]]
    started = story.log("deploy.started")
    rollback = story.log("deploy.rolled_back")
    assert len(rollback) == 1
    assert rollback[0]["transaction"]["body"]["deploy"] == started[1]["tx_id"]  # type: ignore[index]
    gate = started[0]["transaction"]["body"]["gate"]  # type: ignore[index]
    verdict = json.loads(story.cli("show", str(gate), "--json").splitlines()[0])
    assert verdict["transaction"]["body"]["contract"] == "release-gate"
    assert verdict["transaction"]["body"]["result"] == "pass"

    # and in dora
    report = json.loads(story.cli("dora", "--service", "shop", "--json").splitlines()[0])
    totals = report["totals"]
    assert (totals["deployments"], totals["successful_deployments"]) == (2, 1)
    assert (totals["rolled_back_deployments"], totals["failed_deployments"]) == (1, 1)
    assert report["change_failure_rate"] == 0.5
    assert totals["commits_with_lead_time"] == 1  # 9f1c2e7; a11ce55 never shipped
    assert report["lead_time_hours"] > 0
    assert report["failures"][0]["version"] == "2.0.0"
