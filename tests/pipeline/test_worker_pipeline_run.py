"""``opsledger pipeline run`` with ``jobs.queue`` configured runs the jobs on a real
``opsledger worker`` (a subprocess, a real nats-server) and leaves the same evidence on the
ledger as a local run of the same file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.app.pipelines import pipeline_signer
from opsledger.cli.main import app
from opsledger.testing.nats_server import NatsServer, running_nats
from tests.pipeline.test_worker_kill import _opsledger

pytestmark = [pytest.mark.nats, pytest.mark.slow]

# the smallest pipeline, exactly as written
SMALLEST = (Path(__file__).parent / "fixtures" / "pipelines" / "shop.yml").read_text()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


def _home(path: Path, queue: str | None) -> Home:
    home = Home(path)
    home.init(admin="alice", builtin_contracts=False)
    if queue is not None:
        with home.config_path.open("a") as config:
            config.write(f"jobs:\n  queue: {queue}\n  name: runs\n  ack_wait: 5s\n")
    return home


def _run(home: Home, project: Path) -> str:
    result = CliRunner().invoke(
        app, ["--home", str(home.path), "pipeline", "run", str(project / "pipeline.yml")]
    )
    assert result.exit_code == 0, result.output
    runs = home.path / "pipelines" / "runs"
    [state] = sorted(runs.glob("*.json"))
    return state.stem


def _evidence(home: Home, run_id: str) -> list[tuple[Any, ...]]:
    client = home.client()
    try:
        rows = client.list_transactions({"subject": f"run:{run_id}", "limit": 1000})
    finally:
        client.close()
    out = []
    for row in rows:
        tx = row["transaction"]
        body = tx["body"]
        out.append(
            (
                tx["type"],
                tx["actor"],
                body.get("job"),
                body.get("status"),
                body.get("exit_code"),
                tuple(sorted((body.get("artifacts") or {}).items())),
                body.get("log_digest"),
            )
        )
    return sorted(out, key=repr)


def test_pipeline_run_on_a_worker_records_what_a_local_run_records(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.yml").write_text(SMALLEST)

    local = _home(tmp_path / "local", None)
    local_run = _run(local, project)

    queued = _home(tmp_path / "queued", nats_server.url)
    pipeline_signer(queued)  # makes and registers the ``ci`` actor runner and worker sign as
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        worker = subprocess.Popen(
            [_opsledger(), "--home", str(queued.path), "worker", "--name", "w1"],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text(errors="replace"):
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        queued_run = _run(queued, project)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    served = log.read_text(errors="replace")
    assert queued_run in served, served  # the worker, not the runner, ran the jobs

    got, want = _evidence(queued, queued_run), _evidence(local, local_run)
    assert got == want
    finished = [e for e in got if e[0] == "job.finished"]
    assert sorted(e[2] for e in finished) == ["compile", "unit"]  # one result per job
    show = CliRunner().invoke(
        app, ["--home", str(queued.path), "pipeline", "logs", queued_run, "compile"]
    )
    assert show.exit_code == 0, show.output
