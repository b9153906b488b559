"""``opsledger pipeline``: run a pipeline file, list runs, show one, print a job's log,
cancel a run."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from opsledger.app.pipelines import cancel_run, job_log, run_pipeline, runs, show_run
from opsledger.cli._render import kv_table, print_json, print_raw, print_table, say
from opsledger.cli._state import get_state
from opsledger.core import InvalidInput
from opsledger.pipeline import PipelineRunner, RunEvent

__all__ = ["pipeline_app", "register"]

pipeline_app = typer.Typer(
    help="Pipelines as code: run them, follow them, prove them.", no_args_is_help=True
)

_STYLE = {
    "success": "green",
    "failure": "red",
    "timeout": "red",
    "running": "yellow",
    "cancelled": "magenta",
    "interrupted": "magenta",
    "skipped": "dim",
    "pending": "dim",
}


def _parse_vars(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--var {item!r}: use NAME=VALUE", field="var")
        result[key] = value
    return result


def _duration(job: dict[str, Any]) -> str:
    if job.get("duration_ms") is not None:
        return f"{job['duration_ms'] / 1000:.1f}s"
    if job.get("status") == "running" and job.get("started_at"):
        return f"{time.time() - job['started_at']:.1f}s"
    return ""


def _jobs_table(state: dict[str, Any]) -> Table:
    table = Table(
        title=f"{state.get('pipeline')} · run {state.get('run')} · {state.get('status')}",
        title_justify="left",
    )
    for column in ("job", "stage", "status", "duration", "attempts", "reason"):
        table.add_column(column, overflow="fold")
    for name, job in state.get("jobs", {}).items():
        status = str(job.get("status"))
        table.add_row(
            Text(name),
            Text(str(job.get("stage", ""))),
            Text(status, style=_STYLE.get(status, "")),
            Text(_duration(job)),
            Text(str(job.get("attempts") or "")),
            Text(str(job.get("reason") or "")),
        )
    return table


class _LiveTable:
    """Rebuilt at every refresh from the runner's current state."""

    def __init__(self) -> None:
        self.runner: PipelineRunner | None = None

    def __rich__(self) -> Table | Text:
        if self.runner is None:
            return Text("loading the pipeline…")
        return _jobs_table(self.runner.state)


@contextlib.contextmanager
def _interrupt_cancels(cancel: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM (a CI job's timeout) cancels the run: its jobs' process groups
    are ended and recorded, instead of the runner dying and leaving them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        cancel.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@pipeline_app.command("run")
def run(
    ctx: typer.Context,
    *,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The pipeline file (YAML).")],
    var: Annotated[
        list[str] | None, typer.Option("--var", help="NAME=VALUE for ${{ vars.NAME }}.")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Jobs at once (default: CPUs).")
    ] = None,
    show_logs: Annotated[
        bool,
        typer.Option("--logs", help="Stream the jobs' output, each line after its job's name."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's state as JSON.")] = False,
) -> None:
    """Run a pipeline: jobs in parallel as their needs finish, evidence on the ledger.

    Exits 0 when the run succeeds, 1 when it fails or is cancelled (Ctrl-C, SIGTERM).

    Progress goes to stderr: a live table on a terminal, else a line per job state.

    Example: opsledger pipeline run pipeline.yml --var env=staging
    """
    state = get_state(ctx)
    variables = _parse_vars(var or [])
    cancel = threading.Event()
    err: Console = state.err
    live_view = _LiveTable()

    lock = threading.Lock()  # output comes from the jobs' threads

    def stream(event: RunEvent) -> None:
        if show_logs and event.kind == "output":
            with lock:
                say(err, f"[{event.job}] {event.line}")

    def plain(event: RunEvent) -> None:
        stream(event)
        if event.kind == "job" and live_view.runner is not None:
            job = live_view.runner.state["jobs"][event.job or ""]
            extra = f" ({_duration(job)})" if event.status != "running" else ""
            reason = f": {job['reason']}" if job.get("reason") else ""
            say(err, f"{event.job}: {event.status}{extra}{reason}")
        elif event.kind == "run" and event.status == "running" and live_view.runner:
            say(err, f"run {live_view.runner.run_id} of {live_view.runner.spec.name}")

    def on_start(runner: PipelineRunner) -> None:
        live_view.runner = runner

    with _interrupt_cancels(cancel):
        if err.is_terminal:
            with Live(live_view, console=err, refresh_per_second=4, transient=False):
                result = run_pipeline(
                    state.home,
                    file,
                    variables=variables,
                    on_event=stream,
                    cancel=cancel,
                    concurrency=jobs,
                    on_start=on_start,
                )
        else:
            result = run_pipeline(
                state.home,
                file,
                variables=variables,
                on_event=plain,
                cancel=cancel,
                concurrency=jobs,
                on_start=on_start,
            )
    final = show_run(state.home, result.run_id)
    if as_json:
        print_json(state.out, final)
    else:
        say(state.out, f"run {result.run_id}: {result.status}")
    if not result.ok:
        raise typer.Exit(1)


@pipeline_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Runs in this home, newest first.

    Example: opsledger pipeline list
    """
    state = get_state(ctx)
    rows = runs(state.home)
    if as_json:
        for row in rows:
            print_json(state.out, row)
        return
    print_table(
        state.out,
        ["run", "pipeline", "status", "started", "jobs"],
        [
            (
                r["run"],
                r.get("pipeline"),
                r.get("status"),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.get("started_at") or 0)),
                _job_summary(r),
            )
            for r in rows
        ],
    )


def _job_summary(run_state: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for job in run_state.get("jobs", {}).values():
        counts[job.get("status", "?")] = counts.get(job.get("status", "?"), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


@pipeline_app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A run id (pipeline list).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's state as JSON.")] = False,
) -> None:
    """One run: its jobs, their states, durations, digests and ledger transactions.

    Example: opsledger pipeline show 20261122-021500-a1b2c3
    """
    state = get_state(ctx)
    found = show_run(state.home, run_id)
    if as_json:
        print_json(state.out, found)
        return
    state.out.print(
        kv_table(
            [
                ("run", found.get("run")),
                ("pipeline", found.get("pipeline")),
                ("status", found.get("status")),
                ("file", found.get("source")),
                ("digest", found.get("digest")),
                ("commit", found.get("commit")),
            ]
        )
    )
    state.out.print(_jobs_table(found))
    for name, job in found.get("jobs", {}).items():
        for path, digest in sorted((job.get("artifacts") or {}).items()):
            say(state.out, f"{name}: artifact {path} {digest}")
    for what, tx_id in (found.get("tx") or {}).items():
        say(state.out, f"ledger: {what} {tx_id}")


@pipeline_app.command("logs")
def logs(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A run id.")],
    job: Annotated[str, typer.Argument(metavar="JOB", help="A job name of that run.")],
) -> None:
    """Print a job's log (secrets masked as ***), as stored under its digest.

    Example: opsledger pipeline logs 20261122-021500-a1b2c3 compile
    """
    state = get_state(ctx)
    print_raw(state.out, job_log(state.home, run_id, job).decode("utf-8", "replace"))


@pipeline_app.command("cancel")
def cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A running run's id.")],
) -> None:
    """Cancel a running run: running jobs are stopped, the others marked cancelled.

    Example: opsledger pipeline cancel 20261122-021500-a1b2c3
    """
    state = get_state(ctx)
    found = cancel_run(state.home, run_id)
    if found.get("status") == "running":
        say(state.out, f"cancelling run {run_id}")
    else:
        say(state.out, f"run {run_id} is not running ({found.get('status')})")


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
