"""Workers against a real nats-server and a real ledger home: jobs run, are recorded once,
and only then acknowledged; redeliveries reuse the recorded result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.app.workers import queue_dispatcher, worker_handlers
from opsledger.cli.main import app as cli_app
from opsledger.core import Subject, UpstreamError
from opsledger.pipeline import (
    LedgerAccess,
    PipelineRunner,
    PipelineStores,
    parse_pipeline,
    record_job_outcome,
)
from opsledger.pipeline.execute import JobOutcome
from opsledger.pipeline.jobs import JobRequest, JobSpec
from opsledger.pipeline.queue import JobMessage, QueueSettings, connect
from opsledger.pipeline.queue_client import NatsDispatcher, QueueClient
from opsledger.pipeline.spec import JobDef, SecretRef, Step
from opsledger.pipeline.worker import Worker, contract_job_message
from opsledger.testing.nats_server import NatsServer, running_nats

pytestmark = pytest.mark.nats

DIGEST = "sha256:" + hashlib.sha256(b"sample-service 1.4.0").hexdigest()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    # A CLI test run earlier in this process (CliRunner) leaves structlog writing to its
    # stderr, closed since; the in-process workers here would crash on their first log
    # line. ``app.logs.configure_logging`` binds ``sys.stderr`` once: reset around tests.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home whose ``ci`` service identity (key in the home) the workers sign with."""
    home = Home(tmp_path_factory.mktemp("workers") / "home")
    home.init(admin="alice", builtin_contracts=False)
    home.add_actor("ci", ["ci"], kind="service")
    return home


@contextlib.contextmanager
def running_worker(
    home: Home, settings: QueueSettings, name: str, **options: Any
) -> Iterator[Worker]:
    """A worker on its own event-loop thread, stopped (gracefully) afterwards."""
    handlers = options.pop("handlers", None) or worker_handlers(home.client, home.signer("ci"))
    worker = Worker(settings, handlers, name=name, **options)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(worker.run(ready=ready.set)))
    thread.start()
    try:
        assert ready.wait(20), "the worker did not start"
        yield worker
    finally:
        loop.call_soon_threadsafe(worker.request_stop)
        thread.join(30)
        loop.close()
        assert not thread.is_alive()


def _job(*commands: str, name: str = "compile", **kwargs: Any) -> JobDef:
    steps = tuple(Step(c, f"step {i + 1}") for i, c in enumerate(commands))
    return JobDef(name=name, stage="build", steps=steps, **kwargs)


def _finished(home: Home, run: str) -> list[dict[str, Any]]:
    client = home.client()
    try:
        rows = client.list_transactions({"type": "job.finished", "subject": f"run:{run}"})
    finally:
        client.close()
    return [row["transaction"] for row in rows]


def _dispatch(
    dispatcher: NatsDispatcher, run: str, job: JobDef, **kwargs: Any
) -> tuple[JobOutcome, list[str]]:
    lines: list[str] = []
    outcome = dispatcher.dispatch(
        run,
        job,
        kwargs.pop("inputs", {}),
        env=kwargs.pop("env", dict(os.environ)),
        secrets=kwargs.pop("secrets", {}),
        on_output=lines.append,
        cancel=kwargs.pop("cancel", threading.Event()),
    )
    return outcome, lines


def _settings(server: NatsServer, queue: str, **kwargs: Any) -> QueueSettings:
    return QueueSettings(url=server.url, queue=queue, **kwargs)


def test_a_job_runs_on_a_worker_and_its_result_is_recorded_once(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    settings = _settings(nats_server, "basic")
    project = tmp_path / "project"
    project.mkdir()
    (project / "src.txt").write_text("v1")
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text("not sent")
    needed = tmp_path / "needed.bin"
    needed.write_bytes(b"from an earlier job")
    stores = PipelineStores(tmp_path / "stores")
    job = _job(
        "test ! -e .git && cat src.txt needed.bin > app.txt",
        'echo "built by $OPSLEDGER_WORKER with $FLAVOUR"',
        artifacts=("app.txt",),
    )
    with running_worker(home, settings, "w-basic"), QueueClient(settings) as client:
        dispatcher = NatsDispatcher(client, stores, project)
        outcome, lines = _dispatch(
            dispatcher,
            "run-basic",
            job,
            inputs={"needed.bin": needed},
            env={**os.environ, "FLAVOUR": "vanilla"},
        )
        assert outcome.status == "success", outcome.reason
        assert "built by w-basic with vanilla" in lines  # live output, from the worker
        built = b"v1from an earlier job"
        assert outcome.artifacts == {"app.txt": "sha256:" + hashlib.sha256(built).hexdigest()}
        # Like the local dispatcher: log and artifacts are in the runner's stores.
        assert stores.artifacts.get(outcome.artifacts["app.txt"]) == built
        log = stores.logs.get(outcome.log_digest or "")
        assert b"built by w-basic with vanilla" in log
        assert "sha256:" + hashlib.sha256(log).hexdigest() == outcome.log_digest

        # Dispatching the same (run, job) again reuses the result: it is not re-run.
        again, _ = _dispatch(dispatcher, "run-basic", job)
        assert again == outcome
    finished = _finished(home, "run-basic")
    assert len(finished) == 1
    assert finished[0]["actor"] == "ci"
    assert finished[0]["body"]["artifacts"] == outcome.artifacts
    assert finished[0]["body"]["log_digest"] == outcome.log_digest


def test_a_long_log_is_streamed_whole_and_matches_its_digest(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    """The worker spools a job's log to a file and streams it to the Object Store (it no
    longer holds the log in memory): every byte arrives and matches ``log_digest``."""
    settings = _settings(nats_server, "longlog")
    project = tmp_path / "project"
    project.mkdir()
    stores = PipelineStores(tmp_path / "stores")
    job = _job("seq 1 60000 | sed 's/^/line /'", "printf 'caf\\303\\251 \\377 end\\n'")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with (
        running_worker(home, settings, "w-longlog", scratch=scratch),
        QueueClient(settings) as client,
    ):
        outcome, _ = _dispatch(NatsDispatcher(client, stores, project), "run-longlog", job)
    assert outcome.status == "success", outcome.reason
    log = stores.logs.get(outcome.log_digest or "")
    assert "sha256:" + hashlib.sha256(log).hexdigest() == outcome.log_digest
    text = log.decode("utf-8")
    assert text.count("\n") >= 60001
    assert "line 1\n" in text and "line 60000\n" in text
    assert "café \ufffd end" in text  # invalid UTF-8 is replaced, as the digest covers it
    assert list(scratch.iterdir()) == []  # the job's directory and its spooled log are gone


def test_a_redelivered_job_already_on_the_ledger_is_not_run_again(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    """The worker died after recording, before acking: the next one must only ack."""
    settings = _settings(nats_server, "replay")
    job = _job(f"touch {tmp_path / 'ran'}")
    recorded = JobOutcome("success", exit_code=0, duration_ms=5, attempts=1)
    client = home.client()
    try:
        first = record_job_outcome(client, home.signer("ci"), "run-replay", job, recorded)
    finally:
        client.close()
    with running_worker(home, settings, "w-replay"), QueueClient(settings) as queue:
        result = queue.run(
            JobMessage("pipeline", "run-replay", job.name, {"job": job.to_dict()}), timeout=60
        )
    assert result.replayed
    assert result.tx_id == first
    assert result.outcome["status"] == "success"
    assert not (tmp_path / "ran").exists()
    assert len(_finished(home, "run-replay")) == 1


def test_secrets_are_resolved_on_the_worker_and_never_travel(
    nats_server: NatsServer,
    home: Home,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(nats_server, "secrets")
    secret = "worker-side-s3cret-77"
    monkeypatch.setenv("P3_TEST_TOKEN", secret)
    seen: list[bytes] = []

    async def on_message(msg: Any) -> None:
        seen.append(msg.data)

    async def spy() -> Any:
        nc = await connect(settings, name="spy")
        await nc.subscribe(">", cb=on_message)
        return nc

    job = _job('test "$TOKEN" = "$P3_TEST_TOKEN" && echo "token=$TOKEN"', name="uses-secret")
    job = dataclasses.replace(job, secrets={"TOKEN": SecretRef("env", "P3_TEST_TOKEN")})
    loop = asyncio.new_event_loop()
    spy_nc = loop.run_until_complete(spy())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with running_worker(home, settings, "w-secret"), QueueClient(settings) as client:
            dispatcher = NatsDispatcher(client, PipelineStores(tmp_path / "s"), None)
            outcome, lines = _dispatch(dispatcher, "run-secret", job, secrets={"TOKEN": secret})
    finally:
        asyncio.run_coroutine_threadsafe(spy_nc.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert outcome.status == "success", outcome.reason
    assert "token=***" in lines
    assert seen, "the spy saw no traffic"
    assert not any(secret.encode() in data for data in seen), "a secret value crossed NATS"
    assert secret not in str(_finished(home, "run-secret"))


def test_cancel_reaches_the_worker(nats_server: NatsServer, home: Home, tmp_path: Path) -> None:
    settings = _settings(nats_server, "cancel")
    started = tmp_path / "started"
    job = _job(f"touch {started}; sleep 60", "echo never", name="slow")
    cancel = threading.Event()

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cancel.set()

    watcher = threading.Thread(target=cancel_when_started)
    watcher.start()
    with running_worker(home, settings, "w-cancel"), QueueClient(settings) as client:
        dispatcher = NatsDispatcher(client, PipelineStores(tmp_path / "s"), None)
        outcome, lines = _dispatch(dispatcher, "run-cancel", job, cancel=cancel)
    watcher.join()
    assert outcome.status == "cancelled"
    assert "never" not in lines
    [finished] = _finished(home, "run-cancel")
    assert finished["body"]["outcome"] == "cancelled"


class _LedgerDown:
    """A handler whose ledger is unreachable: a transient error, worth redelivering."""

    def __init__(self) -> None:
        self.calls = 0

    def handle(self, message: JobMessage, **_: Any) -> Any:
        self.calls += 1
        raise UpstreamError("ledger unreachable")


def test_a_job_no_worker_can_finish_fails_after_max_deliver(
    nats_server: NatsServer, home: Home
) -> None:
    settings = _settings(nats_server, "flaky", max_deliver=3, ack_wait=1)
    handler = _LedgerDown()
    message = JobMessage("pipeline", "run-flaky", "compile", {"job": _job("true").to_dict()})
    with (
        running_worker(home, settings, "w-flaky", handlers={"pipeline": handler}),
        QueueClient(settings) as client,
    ):
        result = client.run(message, timeout=60)
    assert result.error == "ledger unreachable"
    assert result.delivered == 3
    assert handler.calls == 3
    # A new attempt once the ledger is back gets its own result, not the old failure.
    retry = dataclasses.replace(message, queued_at=message.queued_at + 1)
    with running_worker(home, settings, "w-healthy"), QueueClient(settings) as client:
        second = client.run(retry, timeout=60)
    assert second.error is None
    assert second.worker == "w-healthy"
    assert len(_finished(home, "run-flaky")) == 1


def test_a_job_with_missing_inputs_fails_at_once(nats_server: NatsServer, home: Home) -> None:
    """Redelivering cannot make a missing object appear: no retries."""
    settings = _settings(nats_server, "poison", max_deliver=3)
    message = JobMessage(
        "pipeline",
        "run-poison",
        "compile",
        {"job": _job("true").to_dict()},
        inputs="sha256:" + "0" * 64,
    )
    with running_worker(home, settings, "w-poison"), QueueClient(settings) as client:
        result = client.run(message, timeout=60)
    assert result.error is not None
    assert "no object" in result.error
    assert result.delivered == 1
    assert _finished(home, "run-poison") == []


def test_malformed_messages_are_dropped_and_the_queue_goes_on(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    settings = _settings(nats_server, "malformed")

    async def publish_garbage() -> None:
        nc = await connect(settings, name="garbage")
        js = nc.jetstream()
        from opsledger.pipeline.queue import ensure_queue

        await ensure_queue(js, settings)
        await js.publish(settings.subject, b"{not json")
        await nc.close()

    asyncio.run(publish_garbage())
    with running_worker(home, settings, "w-malformed"), QueueClient(settings) as client:
        dispatcher = NatsDispatcher(client, PipelineStores(tmp_path / "s"), None)
        outcome, _ = _dispatch(dispatcher, "run-after-garbage", _job("true"))
    assert outcome.status == "success"


def test_contract_jobs_run_on_workers_and_record_their_evidence(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    settings = _settings(nats_server, "contracts")
    client = home.client()
    try:
        trigger = client.submit(
            home.signer().sign(
                "release.requested",
                Subject("artifact", DIGEST),
                {"service": "svc", "version": "1.4.0", "digest": DIGEST, "commits": []},
            )
        ).tx_id
    finally:
        client.close()
    project = tmp_path / "project"
    project.mkdir()
    (project / "suite.sh").write_text("echo '3 passed, 0 failed'\n")
    spec = JobSpec(
        name="regression",
        command=["sh", "suite.sh"],
        records="test.finished",
        parser="counts",
        timeout=60,
    )
    request = JobRequest(spec=spec, digest=DIGEST, trigger=trigger, run="rel-1-regression")
    with running_worker(home, settings, "w-contract"), QueueClient(settings) as queue:
        inputs = queue.upload({"suite.sh": project / "suite.sh"})
        result = queue.run(contract_job_message(request, inputs=inputs), timeout=60)
    assert result.error is None
    assert not result.replayed
    assert result.outcome["recorded"] == "test.finished"
    # Delivered again (another queue: no stored result there): found on the ledger.
    other = _settings(nats_server, "contracts-again")
    with running_worker(home, other, "w-contract-2"), QueueClient(other) as queue:
        inputs = queue.upload({"suite.sh": project / "suite.sh"})
        again = queue.run(contract_job_message(request, inputs=inputs), timeout=60)
    assert again.replayed
    assert again.tx_id == result.tx_id
    client = home.client()
    try:
        rows = client.list_transactions({"type": "test.finished", "subject": f"artifact:{DIGEST}"})
    finally:
        client.close()
    [evidence] = [
        row["transaction"] for row in rows if row["transaction"]["body"]["run"] == request.run
    ]
    assert evidence["actor"] == "ci"
    assert evidence["refs"] == [trigger]
    assert (evidence["body"]["passed"], evidence["body"]["failed"]) == (3, 0)


# the smallest pipeline, exactly as written
SMALLEST = (Path(__file__).parent / "fixtures" / "pipelines" / "shop.yml").read_text()


def test_the_runner_runs_the_smallest_pipeline_on_workers(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    (project / "pipeline.yaml").write_text(SMALLEST)
    spec = parse_pipeline(SMALLEST, source=str(project / "pipeline.yaml"))
    spec = dataclasses.replace(spec, root=project)
    config = home.config_path.read_text()
    settings = _settings(nats_server, "runner")
    home.config_path.write_text(config + f"jobs:\n  queue: {nats_server.url}\n  name: runner\n")
    stores = PipelineStores(tmp_path / "stores")
    try:
        with running_worker(home, settings, "w-1"), running_worker(home, settings, "w-2"):
            with queue_dispatcher(home, stores, project, exclude=[home.path]) as dispatcher:
                assert dispatcher is not None
                runner = PipelineRunner(
                    spec,
                    stores=stores,
                    ledger=LedgerAccess(home.client, home.signer()),
                    dispatcher=dispatcher,
                )
                result = runner.run()
    finally:
        home.config_path.write_text(config)
    assert result.ok, result
    finished = _finished(home, runner.run_id)
    assert sorted(tx["body"]["job"] for tx in finished) == ["compile", "unit"]
    assert {tx["actor"] for tx in finished} == {"ci"}
    verify = CliRunner().invoke(cli_app, ["--home", str(home.path), "verify"])
    assert verify.exit_code == 0, verify.output


QUEUED_SUITE = """\
contract: queued-suite
version: 1
description: runs the regression suite of a release request on the workers
triggers: [release.requested]
request: release.requested
evidence:
  tests:
    type: test.finished
    where: e.body.digest == request.body.digest
requirements:
  - name: tested
    check: size(evidence.tests) > 0
jobs:
  - name: regression
    run: [sh, suite.sh]
    records: test.finished
    parser: counts
    when: trigger.type == "release.requested"
"""


def _poll(home: Home, filters: dict[str, Any], timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = home.client()  # short-lived: the worker needs the writer lock too
        try:
            rows = client.list_transactions(filters)
        finally:
            client.close()
        if rows:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"nothing matched {filters} within {timeout} s")


def test_contract_requested_jobs_go_through_the_queue_when_configured(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    from opsledger.app.contracts import deploy_contract

    project = tmp_path / "project"
    project.mkdir()
    (project / "suite.sh").write_text("echo '5 passed, 0 failed'\n")
    digest = "sha256:" + hashlib.sha256(b"queued release").hexdigest()
    config = home.config_path.read_text()
    home.config_path.write_text(
        config + f"contracts:\n  jobs:\n    workdir: {project}\n"
        f"jobs:\n  queue: {nats_server.url}\n  name: e2e\n  actor: ci\n"
    )
    try:
        with running_worker(home, _settings(nats_server, "e2e"), "w-e2e"):
            client = home.client()
            try:
                deploy_contract(client, home.signer(), QUEUED_SUITE)
                client.submit(
                    home.signer().sign(
                        "release.requested",
                        Subject("artifact", digest),
                        {"service": "svc", "version": "2.0.0", "digest": digest, "commits": []},
                    )
                )
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not client.list_transactions(
                    {"type": "contract.verdict", "subject": f"artifact:{digest}"}
                ):
                    time.sleep(0.1)
            finally:
                client.close()  # the node hands the job to the queue and lets go
            rows = _poll(home, {"type": "test.finished", "subject": f"artifact:{digest}"})
    finally:
        home.config_path.write_text(config)
    [evidence] = [row["transaction"] for row in rows]
    assert evidence["actor"] == "ci"  # signed by the worker, not by the node
    assert evidence["body"]["job"] == "regression"
    assert (evidence["body"]["passed"], evidence["body"]["failed"]) == (5, 0)


def test_heartbeats_keep_a_slow_job_with_its_live_worker(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    """A job longer than ack_wait on a live worker is not handed to the idle one."""
    settings = _settings(nats_server, "heartbeat", ack_wait=1)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = _job(f'touch "{marks}/$OPSLEDGER_WORKER"; sleep 3.5', name="slow")
    with (
        running_worker(home, settings, "w-busy"),
        running_worker(home, settings, "w-idle"),
        QueueClient(settings) as queue,
    ):
        result = queue.run(
            JobMessage("pipeline", "run-heartbeat", job.name, {"job": job.to_dict()}),
            timeout=60,
        )
    assert result.error is None
    assert result.delivered == 1
    assert len(list(marks.iterdir())) == 1, "the job was delivered to a second worker"
    assert len(_finished(home, "run-heartbeat")) == 1


def test_one_worker_runs_jobs_concurrently(
    nats_server: NatsServer, home: Home, tmp_path: Path
) -> None:
    settings = _settings(nats_server, "parallel")
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each job waits (bounded) until both have started: only parallel runs both succeed.
    step = (
        f'touch "{marks}/$OPSLEDGER_JOB_NAME"; i=0; '
        f'while [ "$(ls {marks} | wc -l)" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.05; '
        "i=$((i+1)); done; "
        f'[ "$(ls {marks} | wc -l)" -ge 2 ]'
    )
    with (
        running_worker(home, settings, "w-parallel", concurrency=2),
        QueueClient(settings) as queue,
    ):
        futures = [
            queue.submit(
                JobMessage(
                    "pipeline",
                    "run-parallel",
                    name,
                    {"job": _job(step, name=name).to_dict()},
                    env={"OPSLEDGER_JOB_NAME": name},
                )
            )
            for name in ("left", "right")
        ]
        results = [future.result(timeout=60) for future in futures]
    assert [r.outcome["status"] for r in results] == ["success", "success"]
    assert {r.worker for r in results} == {"w-parallel"}
