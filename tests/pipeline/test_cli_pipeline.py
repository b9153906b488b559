"""``opsledger pipeline`` end to end through the CLI, on a fresh home."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from opsledger.cli import app

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pipelines"
OPSLEDGER = str(Path(sys.executable).parent / "opsledger")


def _kill_jobs_under(folder: Path) -> None:
    """End job processes left by a runner that was killed (their groups outlive it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(folder):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)


def cli(home: Path, *args: str) -> Result:
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "home"
    result = CliRunner().invoke(app, ["--home", str(path), "init", "--no-contracts"])
    assert result.exit_code == 0, result.output
    return path


def _project(tmp_path: Path, text: str | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "pipeline.yml"
    if text is None:
        shutil.copy(FIXTURES / "shop.yml", target)
    else:
        target.write_text(text)
    return target


def test_smallest_pipeline_as_written(home: Path, tmp_path: Path) -> None:
    result = cli(home, "pipeline", "run", str(_project(tmp_path)), "--json")
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    assert state["status"] == "success"
    assert [j["status"] for j in state["jobs"].values()] == ["success", "success"]
    assert "compile: success" in result.stderr  # plain progress lines when not a terminal
    run_id = state["run"]

    listed = cli(home, "pipeline", "list", "--json")
    assert run_id in [json.loads(line)["run"] for line in listed.stdout.splitlines()]
    shown = json.loads(cli(home, "pipeline", "show", run_id, "--json").stdout)
    digest = shown["jobs"]["compile"]["artifacts"]["app.txt"]
    assert digest == "sha256:" + hashlib.sha256(b"v1").hexdigest()
    table = cli(home, "pipeline", "show", run_id)
    assert "compile" in table.stdout and digest in table.stdout
    log = cli(home, "pipeline", "logs", run_id, "compile")
    assert log.exit_code == 0
    assert log.stdout.startswith("$ python -c")

    verify = cli(home, "verify")
    assert verify.exit_code == 0, verify.output
    records = cli(home, "log", "--json")
    types = [
        json.loads(line)["transaction"]["type"]
        for line in records.stdout.splitlines()
        if line.strip()
    ]
    assert types.count("job.finished") == 2
    assert "pipeline.finished" in types


def test_failing_run_exits_1_and_skips(home: Path, tmp_path: Path) -> None:
    text = (
        (FIXTURES / "shop.yml")
        .read_text()
        .replace("open('app.txt','w').write('v1')", "open('other.txt','w').write('v1')")
    )
    result = cli(home, "pipeline", "run", str(_project(tmp_path, text)), "--json", "--logs")
    assert result.exit_code == 1
    assert "[compile] $ python -c" in result.stderr  # --logs streams the jobs' output
    state = json.loads(result.stdout)
    assert state["jobs"]["compile"]["status"] == "failure"
    assert state["jobs"]["compile"]["reason"] == "artifact app.txt was not produced"
    assert state["jobs"]["unit"]["status"] == "skipped"


def test_vars_on_the_command_line(home: Path, tmp_path: Path) -> None:
    text = """
pipeline: v
vars: {who: nobody}
stages:
  build:
    jobs:
      hi: {steps: ['test "${{ vars.who }}" = alice']}
"""
    path = _project(tmp_path, text)
    assert cli(home, "pipeline", "run", str(path)).exit_code == 1
    assert cli(home, "pipeline", "run", str(path), "--var", "who=alice").exit_code == 0


def test_bad_input_is_one_line_exit_2(home: Path, tmp_path: Path) -> None:
    path = _project(tmp_path, "pipeline: x\nstages:\n  ship:\n    jobs: {a: {steps: [x]}}\n")
    result = cli(home, "pipeline", "run", str(path))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:3: stages.ship: unknown stage (known, in order: "
        "plan, code, build, test, release, deploy, operate, monitor)"
    ]
    assert cli(home, "pipeline", "show", "nope").exit_code == 2
    assert cli(home, "pipeline", "show", "20200101-000000-abcdef").exit_code == 2
    assert cli(home, "pipeline", "run", str(path), "--var", "novalue").exit_code == 2


def test_cancel_from_another_process(home: Path, tmp_path: Path) -> None:
    path = _project(
        tmp_path,
        "pipeline: slow\nstages:\n  build:\n    jobs:\n"
        "      long: {steps: ['echo started; sleep 60']}\n",
    )
    exe = [OPSLEDGER, "--home", str(home)]
    proc = subprocess.Popen(
        [*exe, "pipeline", "run", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        run_id = None
        deadline = time.monotonic() + 30
        while run_id is None and time.monotonic() < deadline:
            for line in cli(home, "pipeline", "list", "--json").stdout.splitlines():
                row = json.loads(line)
                if row["pipeline"] == "slow" and row["jobs"]["long"]["status"] == "running":
                    run_id = row["run"]
            time.sleep(0.1)
        assert run_id is not None, "the run never started"
        deadline = time.monotonic() + 10
        live = ""
        while "started" not in live and time.monotonic() < deadline:
            live = cli(home, "pipeline", "logs", run_id, "long").stdout
            time.sleep(0.1)
        assert "started" in live  # a running job's log so far
        result = cli(home, "pipeline", "cancel", run_id)
        assert result.stdout.startswith(f"cancelling run {run_id}")
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 1
    assert json.loads(out)["jobs"]["long"]["status"] == "cancelled"
    assert "not running (cancelled)" in cli(home, "pipeline", "cancel", run_id).stdout


def test_a_dead_runner_shows_interrupted(home: Path, tmp_path: Path) -> None:
    path = _project(
        tmp_path,
        "pipeline: dies\nstages:\n  build:\n    jobs:\n      long: {steps: ['sleep 60']}\n",
    )
    exe = [OPSLEDGER, "--home", str(home)]
    proc = subprocess.Popen(
        [*exe, "pipeline", "run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run_id = None
    try:
        deadline = time.monotonic() + 30
        while run_id is None and time.monotonic() < deadline:
            for line in cli(home, "pipeline", "list", "--json").stdout.splitlines():
                row = json.loads(line)
                if row["pipeline"] == "dies" and row["jobs"]["long"]["status"] == "running":
                    run_id = row["run"]
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
        _kill_jobs_under(home / "pipelines" / "work")
    assert run_id is not None
    shown = json.loads(cli(home, "pipeline", "show", run_id, "--json").stdout)
    assert shown["status"] == "interrupted"
    assert shown["jobs"]["long"]["status"] == "interrupted"


def test_progress_table_shows_jobs_states_and_durations() -> None:
    from io import StringIO

    from rich.console import Console

    from opsledger.cli.pipeline import _jobs_table

    state = {
        "pipeline": "shop",
        "run": "20261122-000000-abcdef",
        "status": "running",
        "jobs": {
            "compile": {"stage": "build", "status": "success", "duration_ms": 1250, "attempts": 1},
            "unit": {"stage": "test", "status": "running", "started_at": time.time() - 2},
            "lint": {"stage": "code", "status": "pending"},
        },
    }
    out = StringIO()
    Console(file=out, width=120).print(_jobs_table(state))
    text = out.getvalue()
    assert "shop · run 20261122-000000-abcdef · running" in text
    assert re.search(r"compile\s+│\s+build\s+│\s+success\s+│\s+1\.2s", text), text
    assert re.search(r"unit\s+│\s+test\s+│\s+running\s+│\s+2\.\ds", text), text
    assert "pending" in text


def test_sigterm_cancels_the_run_and_its_jobs(home: Path, tmp_path: Path) -> None:
    path = _project(
        tmp_path,
        "pipeline: term\nstages:\n  build:\n    jobs:\n"
        "      long: {steps: ['sleep 60 & echo $! > child.pid; wait']}\n",
    )
    proc = subprocess.Popen(
        [OPSLEDGER, "--home", str(home), "pipeline", "run", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_id = None
        deadline = time.monotonic() + 30
        while run_id is None and time.monotonic() < deadline:
            for line in cli(home, "pipeline", "list", "--json").stdout.splitlines():
                row = json.loads(line)
                if row["pipeline"] == "term" and row["jobs"]["long"]["status"] == "running":
                    run_id = row["run"]
            time.sleep(0.1)
        assert run_id is not None, "the run never started"
        pid_files: list[Path] = []
        while not pid_files and time.monotonic() < deadline:
            pid_files = list((home / "pipelines" / "work" / run_id).glob("*/child.pid"))
            time.sleep(0.05)
        time.sleep(0.2)  # let the file be written in full
        child = int(pid_files[0].read_text())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 1
    assert json.loads(out)["jobs"]["long"]["status"] == "cancelled"
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()
