"""opsledger pipeline benchmark: what the runner costs per job, and how long scheduling a
1,000-job DAG takes. One run prints every figure beside a baseline measured in the same run,
and the ratio between them. Nothing is asserted; this only measures.

    .venv/bin/python bench/pipeline.py            # default: 50-job chains, the 1,000-job DAG
    .venv/bin/python bench/pipeline.py --quick    # smoke run: 20-job chains, a 200-job DAG
    .venv/bin/python bench/pipeline.py --json out.json

Section 1, runner overhead per job: N trivial jobs (``true``; ``sleep 0.02``), run one after
the other (a chain of ``needs``, so parallelism cannot hide the overhead) by
``opsledger pipeline run`` in-process (``app.pipelines.run_pipeline``, what the CLI calls)
and through the CLI, against the same N commands in a plain ``sh`` script.
Overhead per job = (runner wall - script wall) / N, against the ``sh -c true`` script for
``true`` jobs (one process per job, as the runner starts).
Then where it goes, each part timed on its own: process spawn (``sh -c true``, the
runner's ``execute_job`` with output capture, and ``LocalDispatcher.dispatch``: workdir,
execute, log store), the job's working-directory copy, CLI start-up, and the
ledger writes (``job.started`` + ``job.finished``, each through its own client as the runner
does, so ``opsledger record`` in a step never meets a held writer lock).

Section 2, a generated 1,000-job DAG (200 with ``--quick``; layers, each job needs 1-3
random jobs of earlier layers, fixed seed): the runner with a dispatcher that does nothing
and no ledger (scheduler cost only: loading the file, scheduling, the run-state file) against
``graphlib.TopologicalSorter`` driving the same DAG (the least any Python scheduler can
do), and the full runner (``app.pipelines.run_pipeline``, results on the ledger) with real
``true`` jobs against the same commands (``sh -c true``) in a plain shell script in
topological order.

Run it as a script (it imports its sibling ``benchkit``).
"""

from __future__ import annotations

import argparse
import contextlib
import graphlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import CpuWatch, Report, Row, machine_facts, median, write_json

# -- plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    mode: str
    jobs: int  # section 1: jobs per run
    repeats: int  # section 1: runs per variant (median)
    parts: int  # section 1: samples per breakdown part
    dag_jobs: int  # section 2: DAG size
    dag_real_jobs: int  # section 2: DAG size with real `true` jobs
    dag_repeats: int


PLANS = {
    "quick": Plan(
        "quick", jobs=20, repeats=2, parts=20, dag_jobs=200, dag_real_jobs=100, dag_repeats=1
    ),
    "default": Plan(
        "default", jobs=50, repeats=3, parts=50, dag_jobs=1000, dag_real_jobs=1000, dag_repeats=1
    ),
}
SLEEP = 0.02


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- generated pipelines -------------------------------------------------------------------


def chain_pipeline(count: int, command: str) -> str:
    """``count`` jobs, each needing the previous one: they run strictly one at a time."""
    lines = ["pipeline: bench-chain", "stages:", "  build:", "    jobs:"]
    for i in range(count):
        lines.append(f"      j{i}:")
        if i:
            lines.append(f"        needs: [j{i - 1}]")
        lines.append(f"        steps: [{{run: {command!r}}}]")
    return "\n".join(lines) + "\n"


def random_dag(count: int, seed: int = 4) -> dict[str, list[str]]:
    """``count`` jobs in layers of about sqrt(count); each job after the first layer needs
    1-3 random jobs of earlier layers (mostly the previous one). Same seed, same DAG."""
    rng = random.Random(seed)
    width = max(1, int(count**0.5))
    layers: list[list[str]] = []
    needs: dict[str, list[str]] = {}
    made = 0
    while made < count:
        layer = [f"j{made + i}" for i in range(min(width, count - made))]
        for name in layer:
            if not layers:
                needs[name] = []
                continue
            pool = layers[-1] if rng.random() < 0.7 else [n for lay in layers for n in lay]
            needs[name] = sorted(set(rng.sample(pool, k=min(len(pool), rng.randint(1, 3)))))
        layers.append(layer)
        made += len(layer)
    return needs


def dag_pipeline(needs: Mapping[str, list[str]], command: str) -> str:
    lines = ["pipeline: bench-dag", "stages:", "  build:", "    jobs:"]
    for name, deps in needs.items():
        lines.append(f"      {name}:")
        if deps:
            lines.append(f"        needs: [{', '.join(deps)}]")
        lines.append(f"        steps: [{{run: {command!r}}}]")
    return "\n".join(lines) + "\n"


def topo_order(needs: Mapping[str, list[str]]) -> list[str]:
    return list(graphlib.TopologicalSorter(needs).static_order())


# -- baselines -----------------------------------------------------------------------------


def shell_script_seconds(commands: list[str], workdir: Path) -> float:
    """Wall time of ``sh script`` running the commands one after the other."""
    script = workdir / "baseline.sh"
    script.write_text("set -e\n" + "\n".join(commands) + "\n")
    start = time.perf_counter()
    subprocess.run(["/bin/sh", str(script)], cwd=workdir, check=True)
    return time.perf_counter() - start


def graphlib_noop_seconds(needs: Mapping[str, list[str]]) -> float:
    """The least a scheduler does: hand out ready nodes, mark them done."""
    start = time.perf_counter()
    sorter = graphlib.TopologicalSorter(needs)
    sorter.prepare()
    while sorter.is_active():
        ready = sorter.get_ready()
        sorter.done(*ready)
    return time.perf_counter() - start


# -- the runner (opsledger.pipeline) -------------------------------------------------------


@contextlib.contextmanager
def bench_home(root: Path) -> Iterator[Any]:
    """A fresh home; its ``ci`` actor is made and registered as ``pipeline run`` does."""
    from opsledger.app import Home
    from opsledger.app.pipelines import pipeline_signer

    home = Home(root / "home")
    home.init(admin="alice", builtin_contracts=False)
    pipeline_signer(home)
    yield home


def runner_available() -> str | None:
    """None when ``opsledger.pipeline.runner`` can run pipelines; else why not."""
    try:
        from opsledger.pipeline import runner  # noqa: F401
    except ImportError as exc:
        return f"opsledger.pipeline.runner is not available ({exc})"
    return None


def run_in_process(home: Any, pipeline_file: Path) -> float:
    """Wall seconds of ``app.pipelines.run_pipeline`` (what the CLI calls: load, validate,
    run, every result on the home's ledger as ``ci``); raises unless the run succeeds."""
    from opsledger.app.pipelines import run_pipeline

    start = time.perf_counter()
    result = run_pipeline(home, pipeline_file)
    elapsed = time.perf_counter() - start
    if result.status != "success":
        raise RuntimeError(f"bench pipeline {pipeline_file.name} ended {result.status}")
    return elapsed


def run_scheduler_only(home: Any, pipeline_file: Path) -> float:
    """Wall seconds of a ``PipelineRunner`` with the no-op dispatcher and no ledger: what
    is left is loading the file, scheduling and the run-state file."""
    from opsledger.app.pipelines import stores
    from opsledger.pipeline.runner import PipelineRunner
    from opsledger.pipeline.spec import load_pipeline

    start = time.perf_counter()
    spec = load_pipeline(pipeline_file)
    runner = PipelineRunner(spec, stores=stores(home), ledger=None, dispatcher=NoopDispatcher())
    result = runner.run()
    elapsed = time.perf_counter() - start
    if result.status != "success":
        raise RuntimeError(f"bench pipeline {pipeline_file.name} ended {result.status}")
    return elapsed


def run_cli(home: Any, pipeline_file: Path) -> float:
    """Wall seconds of ``opsledger pipeline run FILE`` as a process (start-up included)."""
    exe = Path(sys.executable).with_name("opsledger")
    start = time.perf_counter()
    result = subprocess.run(
        [str(exe), "--home", str(home.path), "pipeline", "run", str(pipeline_file)],
        check=False,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"opsledger pipeline run failed:\n{result.stderr[-2000:]}")
    return elapsed


def cli_startup_seconds() -> float:
    exe = Path(sys.executable).with_name("opsledger")
    start = time.perf_counter()
    subprocess.run([str(exe), "--help"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


class NoopDispatcher:
    """Answers every job with success at once: what remains is the scheduler's cost."""

    def dispatch(self, run_id: str, job: Any, inputs: Mapping[str, Any], **_: Any) -> Any:
        from opsledger.pipeline.execute import JobOutcome

        now = time.time()
        return JobOutcome(
            status="success", exit_code=0, attempts=1, started_at=now, finished_at=now
        )


# -- where the time goes inside a real run ------------------------------------------------


class Timers:
    """Seconds spent in each wrapped function, summed over threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed_call


@contextlib.contextmanager
def instrumented() -> Iterator[Timers]:
    """Time the runner's own parts during a real run by wrapping, for the run's length
    only, the functions it calls: the ledger writes (``pipeline.evidence.record_*``), the
    dispatcher (``LocalDispatcher.dispatch``) and inside it the workdir copy
    (``prepare_workdir``) and the process (``execute_job``), and the run-state file
    (``save_run``). The bench's only monkeypatching; the figures come from the same run."""
    from opsledger.pipeline import dispatch, evidence, runner

    timers = Timers()
    patches: list[tuple[Any, str, Any]] = [
        (evidence, "record_pipeline_started", "ledger"),
        (evidence, "record_pipeline_finished", "ledger"),
        (evidence, "record_job_started", "ledger"),
        (evidence, "record_job_outcome", "ledger"),
        (dispatch.LocalDispatcher, "dispatch", "dispatch"),
        (dispatch, "prepare_workdir", "workdir"),
        (dispatch, "execute_job", "execute"),
        (runner, "save_run", "runstate"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    try:
        for (owner, attr, name), (_, _, original) in zip(patches, saved, strict=True):
            setattr(owner, attr, timers.wrap(name, original))
        yield timers
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


# -- breakdown parts -----------------------------------------------------------------------


def spawn_seconds() -> float:
    start = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", "true"], check=True)
    return time.perf_counter() - start


def execute_job_seconds(workdir: Path) -> float:
    """The runner's own process path: ``execute_job`` (process group, output streamed,
    log hashed) for a one-step ``true`` job in a prepared directory."""
    from opsledger.pipeline.execute import execute_job
    from opsledger.pipeline.spec import JobDef, Step

    job = JobDef(name="j", stage="build", steps=(Step("true", "true"),))
    start = time.perf_counter()
    outcome = execute_job(
        job,
        workdir=workdir,
        env=dict(os.environ),
        secrets={},
        on_output=lambda _line: None,
        cancel=threading.Event(),
    )
    elapsed = time.perf_counter() - start
    if outcome.status != "success":
        raise RuntimeError(f"execute_job: {outcome.status} {outcome.reason}")
    return elapsed


def workdir_copy_seconds(project: Path, scratch: Path, n: int) -> float:
    """A job's working directory: the runner's ``prepare_workdir`` (a copy of the project
    folder), then its removal after the job (what ``LocalDispatcher`` does)."""
    from opsledger.pipeline.dispatch import prepare_workdir

    target = scratch / f"w{n}"
    start = time.perf_counter()
    prepare_workdir(project, target, {})
    shutil.rmtree(target)
    return time.perf_counter() - start


def local_dispatch_seconds(stores_root: Path, project: Path, n: int) -> float:
    """One ``true`` job through ``LocalDispatcher``: workdir copy, ``execute_job``, log
    stored content-addressed, workdir removed: the runner's whole per-job process path."""
    from opsledger.pipeline.dispatch import LocalDispatcher
    from opsledger.pipeline.logstore import PipelineStores
    from opsledger.pipeline.spec import JobDef, Step

    dispatcher = LocalDispatcher(PipelineStores(stores_root), project)
    job = JobDef(name="j", stage="build", steps=(Step("true", "true"),))
    start = time.perf_counter()
    outcome = dispatcher.dispatch(
        f"bench-{n}",
        job,
        {},
        env=dict(os.environ),
        secrets={},
        on_output=lambda _line: None,
        cancel=threading.Event(),
    )
    elapsed = time.perf_counter() - start
    if outcome.status != "success":
        raise RuntimeError(f"LocalDispatcher: {outcome.status} {outcome.reason}")
    return elapsed


def ledger_write_seconds(home: Any, n: int) -> float:
    """What the runner writes for one job: ``record_job_started`` and the exactly-once
    ``record_job_outcome`` (it first looks for an earlier ``job.finished``), through a
    client opened per call (the runner never holds the writer lock across a run)."""
    from opsledger.app.pipelines import pipeline_signer
    from opsledger.pipeline import evidence as ev
    from opsledger.pipeline.execute import JobOutcome
    from opsledger.pipeline.runner import PerCallClient
    from opsledger.pipeline.spec import JobDef, Step

    client = PerCallClient(home.client)
    signer = pipeline_signer(home)
    job = JobDef(name="j", stage="build", steps=(Step("true", "true"),))
    outcome = JobOutcome(status="success", exit_code=0, attempts=1, duration_ms=1)
    start = time.perf_counter()
    ev.record_job_started(client, signer, f"bench-{n}", job)
    ev.record_job_outcome(client, signer, f"bench-{n}", job, outcome)
    return time.perf_counter() - start


def sample(fn: Callable[[int], float], count: int) -> float:
    return median([fn(i) for i in range(count)])


# -- sections ------------------------------------------------------------------------------


def add_split(
    report: Report, label: str, per_job: float, splits: list[dict[str, float]], n: int
) -> None:
    """Rows for where one job's time went inside the runs (median over the runs)."""

    def part(name: str) -> float:
        return median([split.get(name, 0.0) for split in splits]) * 1000 / n

    ledger, dispatched = part("ledger"), part("dispatch")
    workdir, execute, runstate = part("workdir"), part("execute"), part("runstate")
    for text, value in (
        ("ledger writes (job.started, job.finished, run records)", ledger),
        ("workdir copy", workdir),
        ("execute_job (the process, output streamed)", execute),
        ("log and artifact store, workdir removal", dispatched - workdir - execute),
        ("run-state file writes", runstate),
        ("rest: scheduling, thread hand-offs", per_job - ledger - dispatched - runstate),
    ):
        report.add(Row("1", f"    in the run ({label}): {text}", value, "ms"))


def section_overhead(report: Report, plan: Plan, root: Path, why_not: str | None) -> None:
    log(f"[1] runner overhead per job ({plan.jobs} jobs in a chain)")
    n = plan.jobs
    watch = CpuWatch.start()
    scratch = root / "s1"
    scratch.mkdir()
    # `true` is a shell builtin: no process at all. `sh -c true` is one process per job,
    # what the runner starts for each step, so it is the baseline for the `true` jobs;
    # `sleep` is a program, so its script already starts one process per job.
    variants = {"true": "true", "sleep": f"sleep {SLEEP}"}
    script_ms: dict[str, float] = {}
    for label, command in {**variants, "sh": "sh -c true"}.items():
        wall = median([shell_script_seconds([command] * n, scratch) for _ in range(plan.repeats)])
        script_ms[label] = wall * 1000 / n
        report.add(Row("1", f"plain sh script, `{command}`, per job", script_ms[label], "ms"))

    project = scratch / "project"  # what each job's workdir copies: the pipeline's folder
    project.mkdir()
    (project / "pipeline.yaml").write_text(chain_pipeline(n, "true"))
    spawn_ms = sample(lambda _i: spawn_seconds(), plan.parts) * 1000
    report.add(Row("1", "  part: spawn `sh -c true` (subprocess.run)", spawn_ms, "ms"))
    run_dir = scratch / "exec"
    run_dir.mkdir()
    executes = [execute_job_seconds(run_dir) * 1000 for _ in range(plan.parts)]
    execute_ms = median(executes)
    report.add(
        Row("1", "  part: execute_job(`true`)", execute_ms, "ms", "spawn `sh -c true`", spawn_ms)
    )
    slow = sum(1 for ms in executes if ms > spawn_ms + 25)
    report.extra["execute_job_ms"] = executes
    report.note(
        f"execute_job(`true`): {slow} of {len(executes)} samples took > spawn + 25 ms "
        f"(min {min(executes):.1f} ms, max {max(executes):.1f} ms): a step that exits after "
        "its pipes close waits out one 50 ms poll before it is seen"
    )
    dispatch_ms = sample(lambda i: local_dispatch_seconds(root / "d1", project, i), plan.parts)
    report.add(
        Row(
            "1",
            "  part: LocalDispatcher.dispatch(`true`) (workdir + execute + log store)",
            dispatch_ms * 1000,
            "ms",
            "spawn `sh -c true`",
            spawn_ms,
        )
    )
    copy_ms = sample(lambda i: workdir_copy_seconds(project, scratch, i), plan.parts) * 1000
    report.add(Row("1", "  part: workdir copy (project folder)", copy_ms, "ms"))
    with bench_home(root / "h1") as home:
        write_ms = sample(lambda i: ledger_write_seconds(home, i), plan.parts) * 1000
        report.add(Row("1", "  part: ledger writes (job.started + job.finished)", write_ms, "ms"))
        report.add(
            Row(
                "1",
                "  part: CLI start-up (`opsledger --help`), once per run",
                sample(lambda _i: cli_startup_seconds(), 3) * 1000,
                "ms",
            )
        )
        if why_not:
            report.note(f"section 1 runner figures skipped: {why_not}")
        else:
            for label, command in variants.items():
                chain = scratch / f"p-{label}"
                chain.mkdir()
                pipeline_file = chain / "pipeline.yaml"
                pipeline_file.write_text(chain_pipeline(n, command))
                base = "sh" if label == "true" else label
                baseline = f"plain sh script, `{'sh -c true' if base == 'sh' else command}`"
                walls, splits = [], []
                for _ in range(plan.repeats):
                    with instrumented() as timers:
                        walls.append(run_in_process(home, pipeline_file))
                    splits.append(timers.seconds)
                per_job = median(walls) * 1000 / n
                report.add(
                    Row(
                        "1",
                        f"runner in-process, `{command}`, per job",
                        per_job,
                        "ms",
                        baseline,
                        script_ms[base],
                    )
                )
                overhead = per_job - script_ms[base]
                report.add(Row("1", f"  overhead per job ({label})", overhead, "ms"))
                add_split(report, label, per_job, splits, n)
                cli = median([run_cli(home, pipeline_file) for _ in range(plan.repeats)])
                report.add(
                    Row(
                        "1",
                        f"runner CLI, `{command}`, per job",
                        cli * 1000 / n,
                        "ms",
                        baseline,
                        script_ms[base],
                    )
                )
    report.note(f"section 1: other processes kept {watch.others_cores():.2f} cores busy")


def section_dag(report: Report, plan: Plan, root: Path, why_not: str | None) -> None:
    log(f"[2] scheduling a {plan.dag_jobs}-job DAG")
    watch = CpuWatch.start()
    needs = random_dag(plan.dag_jobs)
    edges = sum(len(d) for d in needs.values())
    report.extra["dag"] = {"jobs": len(needs), "edges": edges}
    base = median([graphlib_noop_seconds(needs) for _ in range(max(3, plan.dag_repeats))])
    report.add(Row("2", f"graphlib no-op, {len(needs)} jobs / {edges} edges", base * 1000, "ms"))
    real_needs = random_dag(plan.dag_real_jobs)
    scratch = root / "s2"
    scratch.mkdir()
    script = median(
        [
            shell_script_seconds(["sh -c true"] * len(topo_order(real_needs)), scratch)
            for _ in range(plan.dag_repeats)
        ]
    )
    report.add(
        Row(
            "2",
            f"plain sh script, {len(real_needs)} `sh -c true` in topological order",
            script * 1000,
            "ms",
        )
    )
    if why_not:
        report.note(f"section 2 runner figures skipped: {why_not}")
        report.note(f"section 2: other processes kept {watch.others_cores():.2f} cores busy")
        return
    with bench_home(root / "h2") as home:
        noop_file = scratch / "noop" / "pipeline.yaml"
        noop_file.parent.mkdir()
        noop_file.write_text(dag_pipeline(needs, "true"))
        noop = median([run_scheduler_only(home, noop_file) for _ in range(plan.dag_repeats)])
        report.add(
            Row(
                "2",
                f"runner, no-op dispatcher, {len(needs)} jobs",
                noop * 1000,
                "ms",
                "graphlib no-op",
                base * 1000,
            )
        )
        report.add(Row("2", "  per job", noop * 1000 / len(needs), "ms"))
        real_file = scratch / "real" / "pipeline.yaml"
        real_file.parent.mkdir()
        real_file.write_text(dag_pipeline(real_needs, "true"))
        real = median([run_in_process(home, real_file) for _ in range(plan.dag_repeats)])
        report.add(
            Row(
                "2",
                f"runner, `true` jobs, {len(real_needs)} jobs",
                real * 1000,
                "ms",
                "plain sh script",
                script * 1000,
            )
        )
        report.add(Row("2", "  per job", real * 1000 / len(real_needs), "ms"))
    report.note(f"section 2: other processes kept {watch.others_cores():.2f} cores busy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer jobs")
    parser.add_argument("--json", type=Path, help="also save the figures as JSON")
    parser.add_argument("--workdir", type=Path, help="where to build homes (default: a tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "default"]
    root = Path(tempfile.mkdtemp(prefix="opsledger-bench-pipeline-", dir=args.workdir))
    report = Report(facts=machine_facts(plan.mode, root))
    print(report.facts_text(), flush=True)
    why_not = runner_available()
    try:
        section_overhead(report, plan, root, why_not)
        section_dag(report, plan, root, why_not)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(report.render())
    for note in report.notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
