"""Pipelines, composed: the home's stores, the signer a run writes as, the commit it is
about, and the run-state queries behind ``opsledger pipeline``.

Who signs: in CI, the service identity whose key is in ``OPSLEDGER_KEY`` /
``OPSLEDGER_KEY_FILE`` (named by ``OPSLEDGER_ACTOR``), exactly as ``home.signer()``
resolves it. On a laptop, a ``ci`` actor: if the home has no ``ci`` key yet, one is made
and registered (role ``ci``, kind service) by the home's admin on the first run, so
pipeline evidence is never signed by a person's admin key.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opsledger.app.deploys import load_deploy_section
from opsledger.app.home import Home
from opsledger.app.keys import key_path, load_key_from_env
from opsledger.app.workers import queue_dispatcher
from opsledger.client.base import Signer
from opsledger.core import NotFound
from opsledger.pipeline import (
    LedgerAccess,
    PipelineRunner,
    PipelineSpec,
    PipelineStores,
    RunEvent,
    RunResult,
    list_runs,
    live_log_path,
    load_pipeline,
    load_run,
    request_cancel,
)

__all__ = [
    "CI_ACTOR",
    "cancel_run",
    "detect_commit",
    "job_log",
    "pipeline_signer",
    "run_pipeline",
    "runs",
    "show_run",
    "stores",
]

CI_ACTOR = "ci"
_COMMIT_VARS = ("GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT", "BUILD_VCS_NUMBER")


def stores(home: Home) -> PipelineStores:
    return PipelineStores(home.path / "pipelines")


def pipeline_signer(home: Home) -> Signer:
    """The CI identity from the environment, else the home's ``ci`` actor (made and
    registered by the admin on first use)."""
    if load_key_from_env() is not None:
        return home.signer()
    if not key_path(home.keys_dir, CI_ACTOR).exists():
        home.add_actor(CI_ACTOR, ["ci"], kind="service", as_actor=home.config().admin)
    return home.signer(CI_ACTOR)


def detect_commit(project: Path | None, environ: Mapping[str, str] | None = None) -> str:
    """The commit a run is about: the CI system's variable, else ``git rev-parse HEAD``
    in the project, else ``unknown``."""
    env = os.environ if environ is None else environ
    for name in _COMMIT_VARS:
        if env.get(name):
            return env[name]
    if project is not None:
        try:
            result = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=project,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return "unknown"


def run_pipeline(
    home: Home,
    path: Path,
    *,
    variables: Mapping[str, str] | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
    cancel: threading.Event | None = None,
    concurrency: int | None = None,
    on_start: Callable[[PipelineRunner], None] | None = None,
) -> RunResult:
    """Load, validate and run the pipeline at ``path`` with this home's ledger."""
    spec: PipelineSpec = load_pipeline(path, variables or {})
    if not home.exists() and home.server_url() is None:
        raise NotFound(f"no ledger at {home.path}: run `opsledger init`, or set OPSLEDGER_SERVER")
    signer = pipeline_signer(home)
    deploy_options: dict[str, Any] = {}
    if home.exists():
        section = load_deploy_section(home)
        deploy_options = {
            "state_dir": section.state_dir,
            "protected_environments": section.protected,
        }
    commit = detect_commit(spec.root)
    # with ``jobs.queue`` configured the jobs run on ``opsledger worker``s; else locally
    with queue_dispatcher(
        home, stores(home), spec.root, commit=commit, exclude=[home.path]
    ) as dispatcher:
        runner = PipelineRunner(
            spec,
            stores=stores(home),
            ledger=LedgerAccess(home.client, signer),
            dispatcher=dispatcher,
            concurrency=concurrency,
            on_event=on_event,
            cancel=cancel,
            commit=commit,
            exclude=[home.path],
            deploy_options=deploy_options,
        )
        if on_start is not None:
            on_start(runner)
        return runner.run()


def runs(home: Home) -> list[dict[str, Any]]:
    return list_runs(stores(home).runs)


def show_run(home: Home, run_id: str) -> dict[str, Any]:
    return load_run(stores(home).runs, run_id)


def job_log(home: Home, run_id: str, job: str) -> bytes:
    state = show_run(home, run_id)
    jobs = state.get("jobs", {})
    if job not in jobs:
        known = ", ".join(jobs) or "none"
        raise NotFound(f"run {run_id} has no job {job!r} (jobs: {known})")
    digest = jobs[job].get("log_digest")
    if not digest and jobs[job].get("status") == "running":
        live = live_log_path(stores(home), run_id, job)
        with contextlib.suppress(FileNotFoundError):
            return live.read_bytes()  # what the job printed so far
    if not digest:
        raise NotFound(f"job {job} of run {run_id} has no log ({jobs[job].get('status')})")
    return stores(home).logs.get(digest)


def cancel_run(home: Home, run_id: str) -> dict[str, Any]:
    return request_cancel(stores(home).runs, run_id)
