"""The issue's "must show": a worker killed mid-job, the job completes on another worker,
and the ledger holds exactly one result. Real ``opsledger worker`` processes, a real
nats-server, SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsledger.app import Home
from opsledger.pipeline.queue import QueueSettings, pipeline_job_message
from opsledger.pipeline.queue_client import QueueClient
from opsledger.pipeline.spec import JobDef, Step
from opsledger.testing.nats_server import NatsServer, running_nats

pytestmark = [pytest.mark.nats, pytest.mark.slow]

ACK_WAIT = "2s"


def _opsledger() -> str:
    found = Path(sys.executable).parent / "opsledger"
    if found.exists():
        return str(found)
    on_path = shutil.which("opsledger")
    assert on_path, "the opsledger console script is not installed (pip install -e .)"
    return on_path


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker ready" in self.output():
                return
            assert self.process.poll() is None, f"{self.name} exited:\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.output()}")


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> Home:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    home = Home(tmp_path / "home")
    home.init(admin="alice", builtin_contracts=False)
    home.add_actor("ci", ["ci"], kind="service")
    with home.config_path.open("a") as config:
        config.write(
            f"jobs:\n  queue: {nats_server.url}\n  name: kill\n"
            f"  ack_wait: {ACK_WAIT}\n  actor: ci\n"
        )
    return home


@pytest.fixture
def workers(home: Home, tmp_path: Path) -> Iterator[dict[str, WorkerProcess]]:
    started: dict[str, WorkerProcess] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}
    try:
        for name in ("worker-a", "worker-b"):
            log = tmp_path / f"{name}.log"
            scratch = tmp_path / f"{name}-jobs"  # what a killed worker leaves stays here
            scratch.mkdir()
            with log.open("wb") as handle:
                process = subprocess.Popen(
                    [
                        _opsledger(),
                        "--home",
                        str(home.path),
                        "worker",
                        "--name",
                        name,
                        "--scratch",
                        str(scratch),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            started[name] = WorkerProcess(name, process, log)
        for worker in started.values():
            worker.wait_ready()
        yield started
    finally:
        for worker in started.values():
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait(timeout=30)


def _wait_for(path: Path, timeout: float = 60.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(path.glob("started-*"))
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no job started within {timeout} s")


def test_a_worker_killed_mid_job_leaves_one_result(
    home: Home, workers: dict[str, WorkerProcess], nats_server: NatsServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    job = JobDef(
        name="slow-build",
        stage="build",
        steps=(
            Step('touch "$MARKS/started-$OPSLEDGER_WORKER"; sleep 4', "work"),
            Step('echo "finished on $OPSLEDGER_WORKER" | tee out.txt', "artifact"),
        ),
        artifacts=("out.txt",),
    )
    settings = QueueSettings(url=nats_server.url, queue="kill", ack_wait=2.0)
    run_id = "run-kill-1"
    with QueueClient(settings) as queue:
        future = queue.submit(
            pipeline_job_message(run_id, job, inputs=None, env={"MARKS": str(marks)})
        )
        [first] = _wait_for(marks)
        victim = workers[first.name.removeprefix("started-")]
        survivor = next(w for w in workers.values() if w is not victim)
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=30)
        result = future.result(timeout=120)

    assert result.error is None, result
    assert result.worker == survivor.name
    assert result.delivered == 2  # redelivered after ack_wait, not re-queued by anyone
    assert not result.replayed
    assert result.outcome["status"] == "success"
    assert (marks / f"started-{survivor.name}").exists()

    ledger = home.client()
    try:
        rows = ledger.list_transactions({"type": "job.finished", "subject": f"run:{run_id}"})
    finally:
        ledger.close()
    finished = [row["transaction"] for row in rows if row["transaction"]["body"]["job"] == job.name]
    assert len(finished) == 1, finished
    assert finished[0]["actor"] == "ci"
    assert finished[0]["body"]["status"] == "success"
    assert finished[0]["body"]["artifacts"] == result.outcome["artifacts"]

    verify = subprocess.run(
        [_opsledger(), "--home", str(home.path), "verify"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # The survivor stops cleanly on SIGTERM.
    survivor.process.send_signal(signal.SIGTERM)
    assert survivor.process.wait(timeout=30) == 0, survivor.output()
    assert "worker stopped" in survivor.output()
