"""The executor and the runner against real processes and a real ledger home."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsledger.app import Home
from opsledger.app.pipelines import pipeline_signer
from opsledger.client.base import LedgerClient
from opsledger.pipeline import (
    JobOutcome,
    LedgerAccess,
    PipelineRunner,
    PipelineStores,
    RunResult,
    execute_job,
    parse_pipeline,
    record_job_outcome,
    request_cancel,
)
from opsledger.pipeline.spec import EvidenceSpec, JobDef, Step


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home(tmp_path_factory.mktemp("runner") / "home")
    home.init(admin="alice", builtin_contracts=False)
    return home


def _job(*commands: str, **kwargs: Any) -> JobDef:
    steps = tuple(Step(c, f"step {i + 1}") for i, c in enumerate(commands))
    return JobDef(name=kwargs.pop("name", "j"), stage="build", steps=steps, **kwargs)


def _execute(job: JobDef, workdir: Path, **kwargs: Any) -> tuple[JobOutcome, list[str]]:
    lines: list[str] = []
    workdir.mkdir(exist_ok=True)
    outcome = execute_job(
        job,
        workdir=workdir,
        env={"PATH": os.environ["PATH"], **kwargs.pop("env", {})},
        secrets=kwargs.pop("secrets", {}),
        on_output=lines.append,
        cancel=kwargs.pop("cancel", threading.Event()),
        kill_grace=kwargs.pop("kill_grace", 1.0),
    )
    return outcome, lines


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (PID 1 here may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


# -- execute_job --
def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    job = _job("sleep 60 & echo $! > child.pid; wait", timeout=1.0)
    outcome, _ = _execute(job, tmp_path)
    assert outcome.status == "timeout"
    assert "timed out" in outcome.reason
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the step's child sleep survived the timeout"


def test_a_finished_step_leaves_nothing_running(tmp_path: Path) -> None:
    outcome, _ = _execute(_job("(sleep 60 &) ; sleep 60 & echo $! > child.pid"), tmp_path)
    assert outcome.status == "success"
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_cancel_stops_the_step(tmp_path: Path) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    try:
        outcome, _ = _execute(_job("sleep 60", "echo never > after"), tmp_path, cancel=cancel)
    finally:
        timer.cancel()
    assert outcome.status == "cancelled"
    assert not (tmp_path / "after").exists()


def test_secrets_are_masked_in_the_output_and_the_digest(tmp_path: Path) -> None:
    secret = "s3cr3t-value-42"
    job = _job('echo "token=$TOKEN"; echo "$TOKEN" >&2; echo plain')
    outcome, lines = _execute(job, tmp_path, secrets={"TOKEN": secret})
    assert outcome.status == "success"
    assert secret not in "\n".join(lines)
    assert "token=***" in lines
    expected = hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()
    assert outcome.log_digest == "sha256:" + expected


def test_retries_rerun_the_job(tmp_path: Path) -> None:
    count = 'n=$(cat c 2>/dev/null || echo 0); n=$((n+1)); echo $n > c; test "$n" -ge 3'
    outcome, lines = _execute(_job(count, retries=2), tmp_path)
    assert outcome.status == "success"
    assert outcome.attempts == 3
    assert "--- attempt 3 of 3 ---" in lines
    failed, _ = _execute(_job("exit 3", retries=1), tmp_path)
    assert (failed.status, failed.exit_code, failed.attempts) == ("failure", 3, 2)


def test_a_failing_step_stops_the_job(tmp_path: Path) -> None:
    outcome, _ = _execute(_job("exit 4", "touch later"), tmp_path)
    assert (outcome.status, outcome.exit_code) == ("failure", 4)
    assert "step 1 exited with status 4" in outcome.reason
    assert not (tmp_path / "later").exists()


def test_artifact_digests_match_sha256sum(tmp_path: Path) -> None:
    job = _job(
        "mkdir -p out && head -c 100000 /dev/urandom > out/a.bin && echo hi > b.txt",
        artifacts=("out", "*.txt"),
    )
    outcome, _ = _execute(job, tmp_path)
    assert outcome.status == "success"
    for relpath, digest in outcome.artifacts.items():
        line = subprocess.run(
            ["sha256sum", relpath], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
        assert digest == "sha256:" + line.split()[0]
    assert set(outcome.artifacts) == {"out/a.bin", "b.txt"}
    missing, _ = _execute(_job("true", artifacts=("nothing.txt",)), tmp_path)
    assert missing.status == "failure"
    assert missing.reason == "artifact nothing.txt was not produced"


def test_test_evidence_is_parsed_from_the_last_step(tmp_path: Path) -> None:
    job = _job("echo '3 passed, 1 failed in 0.2s'; exit 1", evidence=EvidenceSpec("test", "counts"))
    outcome, _ = _execute(job, tmp_path)
    assert outcome.status == "failure"
    assert outcome.evidence is not None
    assert (outcome.evidence["passed"], outcome.evidence["failed"]) == (3, 1)


# -- the runner --
def _run(home: Home, text: str, project: Path, **kwargs: Any) -> RunResult:
    project.mkdir(parents=True, exist_ok=True)
    (project / "pipeline.yml").write_text(text)
    from opsledger.pipeline import load_pipeline

    spec = load_pipeline(project / "pipeline.yml", kwargs.pop("variables", {}))
    runner = PipelineRunner(
        spec,
        stores=PipelineStores(home.path / "pipelines"),
        ledger=LedgerAccess(home.client, pipeline_signer(home)),
        exclude=[home.path],
        **kwargs,
    )
    return runner.run()


@pytest.fixture
def client(home: Home) -> Iterator[LedgerClient]:
    c = home.client()
    try:
        yield c
    finally:
        c.close()


def _txs(home: Home, run_id: str) -> list[dict[str, Any]]:
    c = home.client()
    try:
        return [
            r["transaction"]
            for r in c.list_transactions({"subject": f"run:{run_id}", "limit": 1000})
        ]
    finally:
        c.close()


SHOP = (Path(__file__).parent / "fixtures" / "pipelines" / "shop.yml").read_text()


def test_smallest_pipeline_runs_and_is_recorded(home: Home, tmp_path: Path) -> None:
    result = _run(home, SHOP, tmp_path / "p")
    assert result.status == "success"
    assert {n: j["status"] for n, j in result.jobs.items()} == {
        "compile": "success",
        "unit": "success",
    }
    types = [t["type"] for t in _txs(home, result.run_id)]
    assert types == [
        "pipeline.started",
        "job.started",
        "job.finished",
        "job.started",
        "job.finished",
        "pipeline.finished",
    ]
    txs = _txs(home, result.run_id)
    assert {t["actor"] for t in txs} == {"ci"}
    compile_ = next(t for t in txs if t["type"] == "job.finished" and t["body"]["job"] == "compile")
    expected = "sha256:" + hashlib.sha256(b"v1").hexdigest()
    assert compile_["body"]["artifacts"] == {"app.txt": expected}
    stored = PipelineStores(home.path / "pipelines")
    assert stored.artifacts.get(expected) == b"v1"
    assert stored.logs.has(compile_["body"]["log_digest"])


def test_a_failing_job_fails_the_run_and_skips_its_dependants(home: Home, tmp_path: Path) -> None:
    text = SHOP.replace("open('app.txt','w').write('v1')", "import sys; sys.exit(3)")
    text += (
        "      report:\n        needs: [unit]\n        if: always()\n        steps: [echo report]\n"
    )
    result = _run(home, text, tmp_path / "p")
    assert result.status == "failure"
    jobs = result.jobs
    assert (jobs["compile"]["status"], jobs["compile"]["exit_code"]) == ("failure", 3)
    assert jobs["unit"]["status"] == "skipped"
    assert jobs["report"]["status"] == "success"  # always() runs after a failure
    started = [t["body"]["job"] for t in _txs(home, result.run_id) if t["type"] == "job.started"]
    assert "unit" not in started


def test_independent_jobs_overlap_and_needs_order(home: Home, tmp_path: Path) -> None:
    text = """
pipeline: par
stages:
  build:
    jobs:
      a: {steps: [sleep 1]}
      b: {steps: [sleep 1]}
      c: {needs: [a, b], steps: ["true"]}
"""
    result = _run(home, text, tmp_path / "p", concurrency=2)
    a, b, c = (result.jobs[n] for n in "abc")
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
    assert c["started_at"] >= max(a["finished_at"], b["finished_at"])


def test_typed_evidence_on_the_artifact(home: Home, tmp_path: Path) -> None:
    text = """
pipeline: ev
stages:
  build:
    jobs:
      compile:
        steps: ["echo v2 > app.txt"]
        artifacts: [app.txt]
        evidence: build
  test:
    jobs:
      unit:
        needs: [compile]
        steps: ["test -f app.txt && echo '5 passed in 0.1s'"]
        evidence: {type: test, parser: counts, name: unit-suite}
"""
    result = _run(home, text, tmp_path / "p")
    assert result.status == "success"
    digest = "sha256:" + hashlib.sha256(b"v2\n").hexdigest()
    c = home.client()
    try:
        rows = c.list_transactions({"subject": f"artifact:{digest}", "limit": 100})
    finally:
        c.close()
    by_type = {
        r["transaction"]["type"]: r["transaction"]
        for r in rows
        if r["transaction"]["body"].get("run") == result.run_id
    }
    assert by_type["build.finished"]["body"]["digest"] == digest
    assert by_type["build.finished"]["body"]["status"] == "success"
    test_body = by_type["test.finished"]["body"]
    assert (test_body["suite"], test_body["passed"], test_body["failed"]) == ("unit-suite", 5, 0)


def test_recording_a_job_outcome_is_exactly_once(home: Home, tmp_path: Path) -> None:
    job = _job("true", name="once", evidence=EvidenceSpec("test", "counts"))
    outcome = JobOutcome("success", exit_code=0, attempts=1, evidence={"passed": 1, "failed": 0})
    inputs = {"app.txt": "sha256:" + "cd" * 32}
    c = home.client()
    try:
        signer = pipeline_signer(home)
        first = record_job_outcome(c, signer, "20260101-000000-abcdef", job, outcome, inputs=inputs)
        second = record_job_outcome(
            c, signer, "20260101-000000-abcdef", job, outcome, inputs=inputs
        )
        finished = c.list_transactions(
            {"type": "job.finished", "subject": "run:20260101-000000-abcdef"}
        )
        tests = c.list_transactions(
            {"type": "test.finished", "subject": "artifact:" + "sha256:" + "cd" * 32}
        )
    finally:
        c.close()
    assert first == second
    assert len(finished) == 1
    assert len(tests) == 1 and tests[0]["transaction"]["refs"] == [first]


def test_secrets_never_reach_the_ledger_or_the_log(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("SHOP_TOKEN", secret)
    text = """
pipeline: sec
stages:
  build:
    jobs:
      use:
        secrets: {TOKEN: "env:SHOP_TOKEN"}
        steps: ['echo "using $TOKEN"', 'test "$TOKEN" = tok-9f8e7d6c5b4a']
"""
    result = _run(home, text, tmp_path / "p")
    assert result.status == "success"
    log = PipelineStores(home.path / "pipelines").logs.get(result.jobs["use"]["log_digest"])
    assert secret.encode() not in log and b"using ***" in log
    assert secret not in json.dumps(_txs(home, result.run_id))
    state = (home.path / "pipelines" / "runs" / f"{result.run_id}.json").read_text()
    assert secret not in state
    missing = _run(home, text.replace("SHOP_TOKEN", "NOT_SET_ANYWHERE"), tmp_path / "q")
    assert missing.jobs["use"]["status"] == "failure"
    assert "NOT_SET_ANYWHERE is not set" in missing.jobs["use"]["reason"]


def test_matrix_jobs_run_each_combination(home: Home, tmp_path: Path) -> None:
    text = """
pipeline: mx
stages:
  test:
    jobs:
      t:
        matrix: {n: ["1", "2"], m: [a]}
        steps: ['echo ${{ matrix.n }}${{ matrix.m }} > out.txt']
        artifacts: [out.txt]
"""
    result = _run(home, text, tmp_path / "p")
    assert result.status == "success"
    digests = {n: j["artifacts"]["out.txt"] for n, j in result.jobs.items()}
    assert digests == {
        "t[n=1,m=a]": "sha256:" + hashlib.sha256(b"1a\n").hexdigest(),
        "t[n=2,m=a]": "sha256:" + hashlib.sha256(b"2a\n").hexdigest(),
    }


def test_cancel_marker_stops_a_running_run(home: Home, tmp_path: Path) -> None:
    text = """
pipeline: slow
stages:
  build:
    jobs:
      long: {steps: ["sleep 60"]}
  test:
    jobs:
      after: {needs: [long], steps: ["true"]}
"""
    project = tmp_path / "p"
    project.mkdir()
    (project / "pipeline.yml").write_text(text)
    from opsledger.pipeline import load_pipeline

    spec = load_pipeline(project / "pipeline.yml")
    stores = PipelineStores(home.path / "pipelines")
    runner = PipelineRunner(
        spec,
        stores=stores,
        ledger=LedgerAccess(home.client, pipeline_signer(home)),
        exclude=[home.path],
    )
    results: list[RunResult] = []
    thread = threading.Thread(target=lambda: results.append(runner.run()))
    thread.start()
    deadline = time.monotonic() + 20
    while runner.state["jobs"]["long"]["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    request_cancel(stores.runs, runner.run_id)
    thread.join(timeout=30)
    assert not thread.is_alive()
    result = results[0]
    assert result.status == "cancelled"
    assert result.jobs["long"]["status"] == "cancelled"
    assert result.jobs["after"]["status"] == "cancelled"


def test_conditions_and_vars(home: Home, tmp_path: Path) -> None:
    text = """
pipeline: cond
vars: {env: dev}
stages:
  deploy:
    jobs:
      prod: {if: "vars.env == 'prod'", steps: ["true"]}
      dev: {if: "${{ vars.env }} == 'dev'", steps: ["true"]}
"""
    result = _run(home, text, tmp_path / "p")
    assert (result.jobs["prod"]["status"], result.jobs["dev"]["status"]) == ("skipped", "success")
    result = _run(home, text, tmp_path / "q", variables={"env": "prod"})
    assert (result.jobs["prod"]["status"], result.jobs["dev"]["status"]) == ("success", "skipped")


def test_the_parser_rejects_before_anything_runs(tmp_path: Path) -> None:
    from opsledger.core import ConfigError

    with pytest.raises(ConfigError):
        parse_pipeline("pipeline: x\nstages: {build: {jobs: {a: {steps: [x], needs: [a]}}}}\n")


def test_scan_evidence_from_real_bandit(home: Home, tmp_path: Path) -> None:
    """bandit exits 1 when it finds issues: a finished scan, recorded by severity."""
    from .scanners import SAMPLE, bandit_argv

    project = tmp_path / "svc"
    shutil.copytree(SAMPLE, project)
    bandit = " ".join(bandit_argv())
    text = f"""
pipeline: scan
stages:
  build:
    jobs:
      pack:
        steps: ["tar -cf svc.tar inventory"]
        artifacts: [svc.tar]
  test:
    jobs:
      sast:
        needs: [pack]
        steps: ["{bandit}"]
        evidence: {{type: scan, parser: bandit}}
      strict:
        needs: [pack]
        steps: ["{bandit}"]
        evidence: {{type: scan, parser: bandit, fail_on: low}}
"""
    result = _run(home, text, project)
    assert result.jobs["sast"]["status"] == "success"
    assert result.jobs["strict"]["status"] == "failure"
    assert "(fail_on: low)" in result.jobs["strict"]["reason"]
    digest = result.jobs["pack"]["artifacts"]["svc.tar"]
    c = home.client()
    try:
        rows = c.list_transactions({"type": "scan.finished", "subject": f"artifact:{digest}"})
    finally:
        c.close()
    bodies = {r["transaction"]["body"]["job"]: r["transaction"]["body"] for r in rows}
    assert set(bodies) == {"sast", "strict"}
    findings = bodies["sast"]["findings"]
    assert set(findings) == {"critical", "high", "medium", "low"}
    assert sum(findings.values()) > 0  # the sample service has known bandit findings


DEPLOY = """
pipeline: ship
stages:
  build:
    jobs:
      compile:
        steps: ["echo v3 > app.txt"]
        artifacts: [app.txt]
  deploy:
    jobs:
      staging:
        needs: [compile]
        deploy:
          service: shop
          environment: staging
          strategy: blue-green
          artifact: app.txt
          target:
            kind: script
            deploy: ["true"]
            switch: ["true"]
            health: ["HEALTH"]
            stop: ["true"]
            rollback: ["true"]
          health: {timeout: 0.3s, interval: 0.1s}
"""


@pytest.mark.parametrize(("health", "status"), [("true", "success"), ("false", "failure")])
def test_deploy_jobs_hand_over_to_the_deploy_strategies(
    home: Home, tmp_path: Path, health: str, status: str
) -> None:
    result = _run(
        home,
        DEPLOY.replace("HEALTH", health),
        tmp_path / "p",
        variables={"version": "3.0.0"},
        deploy_options={"state_dir": tmp_path / "deploy-state"},
    )
    assert result.jobs["staging"]["status"] == status, result.jobs["staging"]["reason"]
    digest = "sha256:" + hashlib.sha256(b"v3\n").hexdigest()
    c = home.client()
    try:
        rows = c.list_transactions({"type": "deploy.finished", "subject": "service:shop"})
    finally:
        c.close()
    body = rows[-1]["transaction"]["body"]
    assert (body["service"], body["version"], body["digest"]) == ("shop", "3.0.0", digest)
    assert body["status"] == ("success" if health == "true" else "rolled_back")
    if status == "failure":
        assert result.jobs["staging"]["reason"].startswith("deploy rolled_back:")


def test_the_ci_key_never_reaches_a_step(home: Home, tmp_path: Path) -> None:
    key = "ZmFrZS1rZXktZm9yLXRoZS10ZXN0LW9ubHk="
    step = "echo ${OPSLEDGER_KEY:-absent} ${OPSLEDGER_KEY_FILE:-absent}"
    text = f"pipeline: k\nstages:\n  build:\n    jobs:\n      echo: {{steps: ['{step}']}}\n"
    environ = {"PATH": os.environ["PATH"], "OPSLEDGER_KEY": key, "OPSLEDGER_KEY_FILE": "/k"}
    result = _run(home, text, tmp_path / "p", environ=environ)
    log = PipelineStores(home.path / "pipelines").logs.get(result.jobs["echo"]["log_digest"])
    assert log == f"$ {step}\nabsent absent\n".encode()
    # nor can a pipeline ask for it as a secret
    sneaky = (
        "pipeline: k\nstages:\n  build:\n    jobs:\n      leak:\n"
        "        secrets: {K: env:OPSLEDGER_KEY}\n        steps: ['echo $K']\n"
    )
    refused = _run(home, sneaky, tmp_path / "q", environ=environ)
    assert refused.jobs["leak"]["status"] == "failure"
    assert "signing key" in refused.jobs["leak"]["reason"]


def test_a_protected_environment_from_opsledger_yaml_refuses_a_pipeline_deploy(
    tmp_path: Path,
) -> None:
    """The home's ``deploy`` section reaches the pipeline's deploy: staging is protected
    only in ``opsledger.yaml`` (not in the pipeline), and no release-gate verdict exists."""
    from opsledger.app.pipelines import run_pipeline

    home = Home(tmp_path / "home")
    home.init(admin="alice", builtin_contracts=False)
    with home.config_path.open("a") as config:
        config.write(
            "deploy:\n  state_dir: dstate\n  environments:\n    staging: {protected: true}\n"
        )
    project = tmp_path / "p"
    project.mkdir()
    (project / "pipeline.yml").write_text(DEPLOY.replace("HEALTH", "true"))
    result = run_pipeline(home, project / "pipeline.yml", variables={"version": "3.0.0"})
    staging = result.jobs["staging"]
    assert staging["status"] == "failure"
    assert "staging is protected" in staging["reason"], staging["reason"]
    c = home.client()
    try:
        started = c.list_transactions({"type": "deploy.started", "subject": "service:shop"})
    finally:
        c.close()
    assert started == []  # refused before it started
    assert not (home.path / "dstate" / "shop" / "staging" / "script.json").exists()


def test_the_deploy_counts_in_the_job_duration(home: Home, tmp_path: Path) -> None:
    text = DEPLOY.replace("HEALTH", "true").replace('deploy: ["true"]', 'deploy: ["sleep", "0.4"]')
    result = _run(
        home,
        text,
        tmp_path / "p",
        variables={"version": "3.0.1"},
        deploy_options={"state_dir": tmp_path / "deploy-state"},
    )
    staging = result.jobs["staging"]
    assert staging["status"] == "success", staging["reason"]
    assert staging["duration_ms"] >= 400  # the steps are instant; the deploy hook sleeps
    assert staging["finished_at"] - staging["started_at"] >= 0.4


def test_a_killed_parent_takes_its_job_processes_with_it(tmp_path: Path) -> None:
    """``die_with_parent``: SIGKILL the process running ``execute_job`` mid-step; the
    step's shell and the child it started are killed too, not orphaned."""
    script = (
        "import os, sys, threading\n"
        "from pathlib import Path\n"
        "from opsledger.pipeline import execute_job\n"
        "from opsledger.pipeline.spec import JobDef, Step\n"
        "job = JobDef(name='j', stage='build', steps=(Step("
        "'sleep 300 & echo $! > child.pid; echo $$ > shell.pid; wait', 'long'),))\n"
        "execute_job(job, workdir=Path(sys.argv[1]), env=dict(os.environ), secrets={},"
        " on_output=lambda line: None, cancel=threading.Event(), die_with_parent=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "shell.pid").exists() or not (tmp_path / "shell.pid").read_text():
            assert time.monotonic() < deadline, "the step never started"
            assert proc.poll() is None, "the runner process ended early"
            time.sleep(0.05)
        time.sleep(0.3)  # let the guard arm itself (it checks its parent after prctl anyway)
        pids = [int((tmp_path / n).read_text()) for n in ("child.pid", "shell.pid")]
        assert not any(_gone(pid) for pid in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in pids if not _gone(pid)]
    for pid in alive:
        os.kill(pid, 9)
    assert alive == [], "the step's processes outlived the killed parent"


def test_batched_recording_writes_only_the_missing_results(home: Home) -> None:
    from opsledger.pipeline import FinishedJob, RecordedResults, record_job_outcomes

    run = "20260101-000000-b47c4e"
    done = JobOutcome("success", exit_code=0, attempts=1)
    jobs = [_job("true", name=f"b{i}") for i in range(3)]
    signer = pipeline_signer(home)  # registers ``ci`` on first use: before the client
    c = home.client()
    try:
        early = record_job_outcome(c, signer, run, jobs[1], done)  # e.g. written by a worker
        seen = RecordedResults(run).refresh(c)
        ids = record_job_outcomes(
            c, signer, run, [FinishedJob(j, done) for j in jobs], recorded=seen
        )
        again = record_job_outcomes(c, signer, run, [FinishedJob(j, done) for j in jobs])
        rows = c.list_transactions({"type": "job.finished", "subject": f"run:{run}"})
    finally:
        c.close()
    assert ids[1] == early
    assert again == ids
    assert sorted(r["transaction"]["body"]["job"] for r in rows) == ["b0", "b1", "b2"]


def test_a_result_recorded_between_the_look_and_the_write_stands(home: Home) -> None:
    """Two recorders of one job (a redelivery while the first worker was only silent):
    the one whose view is stale is refused by the node and takes the other's result,
    writing no evidence of its own (its outcome differs from the one that stands)."""
    from opsledger.pipeline import FinishedJob, RecordedResults, record_job_outcomes

    run = "20260101-000000-7ace01"
    jobs = [_job("true", name="r0"), _job("true", name="r1")]
    signer = pipeline_signer(home)
    c = home.client()
    try:
        stale = RecordedResults(run).refresh(c)  # looked: nothing recorded yet
        winner = record_job_outcome(c, signer, run, jobs[0], JobOutcome("failure", exit_code=1))
        ids = record_job_outcomes(
            c,
            signer,
            run,
            [FinishedJob(j, JobOutcome("success", exit_code=0, attempts=1)) for j in jobs],
            recorded=stale,
        )
        rows = c.list_transactions({"type": "job.finished", "subject": f"run:{run}"})
    finally:
        c.close()
    assert ids[0] == winner
    assert isinstance(ids[1], str) and ids[1] != winner
    results = {r["transaction"]["body"]["job"]: r["transaction"]["body"] for r in rows}
    assert sorted(results) == ["r0", "r1"]
    assert results["r0"]["status"] == "failure"  # the first result stands


def test_a_result_is_on_the_ledger_before_its_dependants_start(home: Home, tmp_path: Path) -> None:
    text = (
        "pipeline: order\nstages:\n  build:\n    jobs:\n"
        "      a: {steps: ['true']}\n"
        "      b: {steps: ['true'], needs: [a]}\n"
        "      c: {steps: ['true'], needs: [a, b]}\n"
    )
    result = _run(home, text, tmp_path / "p")
    assert result.status == "success"
    seq = [(t["type"], t["body"].get("job")) for t in _txs(home, result.run_id)]
    assert seq.index(("job.finished", "a")) < seq.index(("job.started", "b"))
    assert seq.index(("job.finished", "b")) < seq.index(("job.started", "c"))
