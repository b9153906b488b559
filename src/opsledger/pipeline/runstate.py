"""Run state on disk: what ``pipeline list/show/logs/cancel`` read while or after a run.

One JSON file per run, ``<pipelines>/runs/<run-id>.json``, rewritten atomically (temporary
file, fsync, rename) at every job transition, so a crash leaves the last complete state,
never half a file. It names the runner's pid: a run still marked ``running`` whose runner
is gone is shown as ``interrupted``. Cancelling writes ``<run-id>.cancel`` next to it; the
runner polls for that marker (a file works for any user allowed to write the home and
survives a runner that is busy, where a signal could be lost or kill the wrong process).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from opsledger.core import InvalidInput, NotFound

__all__ = [
    "RUN_ID",
    "cancel_requested",
    "list_runs",
    "load_run",
    "request_cancel",
    "save_run",
]

RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
FINAL = {"success", "failure", "cancelled"}


def _check_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise InvalidInput(f"not a run id: {run_id!r} (see `opsledger pipeline list`)")
    return run_id


def save_run(runs_dir: Path, state: dict[str, Any], *, durable: bool = True) -> None:
    """Replace the run's state file atomically (a reader sees the old or the new one).
    ``durable`` also fsyncs it: a run's first and last states must survive a power cut;
    the progress in between is rewritten every few hundred milliseconds and the ledger,
    not this file, is the record, so those skip the fsync (it cost ~90 ms a write here)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    target = runs_dir / f"{_check_id(state['run'])}.json"
    fd, tmp = tempfile.mkstemp(dir=runs_dir, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            # one write, by the C encoder (``indent`` would take the slow pure-Python one)
            handle.write(json.dumps(state, sort_keys=True))
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _settle(state: dict[str, Any]) -> dict[str, Any]:
    """A run whose runner died mid-way is ``interrupted``, and so are its running jobs."""
    if state.get("status") not in FINAL and not _alive(state.get("pid")):
        state["status"] = "interrupted"
        for job in state.get("jobs", {}).values():
            if job.get("status") in ("running", "pending"):
                job["status"] = "interrupted"
    return state


def load_run(runs_dir: Path, run_id: str) -> dict[str, Any]:
    path = runs_dir / f"{_check_id(run_id)}.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"no run {run_id} (see `opsledger pipeline list`)") from None
    except ValueError:
        raise InvalidInput(f"the state of run {run_id} is unreadable: {path}") from None
    if not isinstance(state, dict):
        raise InvalidInput(f"the state of run {run_id} is unreadable: {path}")
    return _settle(state)


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run, newest first."""
    if not runs_dir.is_dir():
        return []
    runs = []
    for path in sorted(runs_dir.glob("*.json"), reverse=True):
        if not RUN_ID.match(path.stem):
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            runs.append(_settle(state))
    return runs


def request_cancel(runs_dir: Path, run_id: str) -> dict[str, Any]:
    """Ask the run's runner to stop; returns the run's state (unchanged if it ended)."""
    state = load_run(runs_dir, run_id)
    if state.get("status") == "running":
        (runs_dir / f"{run_id}.cancel").write_text("cancel\n")
    return state


def cancel_requested(runs_dir: Path, run_id: str) -> bool:
    return (runs_dir / f"{run_id}.cancel").exists()
