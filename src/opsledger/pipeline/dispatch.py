"""Where a job runs: the ``JobDispatcher`` protocol and the local, thread-based one.

The runner decides *what* runs and records the result; a dispatcher decides *where*.
``LocalDispatcher`` prepares a fresh working directory (a copy of the project plus the
input artifacts), calls ``execute_job`` in the calling thread and stores the log and the
artifacts content-addressed. A queue-backed dispatcher (NATS workers) does the same on
another machine and must leave the same things behind before it returns: the log under
``outcome.log_digest`` in the runner's log store, every ``outcome.artifacts`` digest in
its artifact store.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from opsledger.pipeline.execute import JobOutcome, execute_job
from opsledger.pipeline.logstore import PipelineStores
from opsledger.pipeline.spec import JobDef

__all__ = [
    "IGNORED_DIRS",
    "JobDispatcher",
    "LocalDispatcher",
    "live_log_path",
    "prepare_workdir",
]

IGNORED_DIRS = frozenset({".git", ".opsledger", "node_modules", ".venv"})
"""Never copied into a job's directory: history, ledgers and dependency caches."""


class JobDispatcher(Protocol):
    def dispatch(
        self,
        run_id: str,
        job: JobDef,
        inputs: Mapping[str, Path],
        *,
        env: Mapping[str, str],
        secrets: Mapping[str, str],
        on_output: Callable[[str], None],
        cancel: threading.Event,
    ) -> JobOutcome:
        """Run ``job`` with ``inputs`` (relative path → file holding the bytes) in its
        directory; return when its log and artifacts are in the runner's stores."""


def prepare_workdir(
    project: Path | None,
    workdir: Path,
    inputs: Mapping[str, Path],
    exclude: Iterable[Path] = (),
) -> None:
    """``workdir`` := a copy of ``project`` (without ``IGNORED_DIRS`` and ``exclude``)
    plus each input artifact at its relative path."""
    if workdir.exists():
        shutil.rmtree(workdir)
    excluded = {p.resolve() for p in exclude}
    if project is not None:
        root = project.resolve()

        def ignore(folder: str, names: list[str]) -> set[str]:
            here = Path(folder).resolve()
            return {n for n in names if n in IGNORED_DIRS or (here / n) in excluded}

        shutil.copytree(root, workdir, symlinks=True, ignore=ignore)
    else:
        workdir.mkdir(parents=True)
    for relpath, source in inputs.items():
        target = workdir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        shutil.copyfile(source, target)


def _dirname(job: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", job)


def live_log_path(stores: PipelineStores, run_id: str, job: str) -> Path:
    """Where ``LocalDispatcher`` writes a running job's log (gone once it is stored)."""
    return stores.work / run_id / f"{_dirname(job)}.log"


class LocalDispatcher:
    """Runs jobs in this process's threads; ``keep_workdirs`` leaves them for debugging."""

    def __init__(
        self,
        stores: PipelineStores,
        project: Path | None,
        *,
        exclude: Iterable[Path] = (),
        keep_workdirs: bool = False,
        kill_grace: float = 5.0,
    ) -> None:
        self.stores = stores
        self.project = project
        self.exclude = [stores.root, *exclude]
        self.keep_workdirs = keep_workdirs
        self.kill_grace = kill_grace

    def workdir(self, run_id: str, job: str) -> Path:
        return self.stores.work / run_id / _dirname(job)

    def dispatch(
        self,
        run_id: str,
        job: JobDef,
        inputs: Mapping[str, Path],
        *,
        env: Mapping[str, str],
        secrets: Mapping[str, str],
        on_output: Callable[[str], None],
        cancel: threading.Event,
    ) -> JobOutcome:
        workdir = self.workdir(run_id, job.name)
        prepare_workdir(self.project, workdir, inputs, self.exclude)
        log_path = live_log_path(self.stores, run_id, job.name)
        try:
            outcome = execute_job(  # `pipeline logs` reads log_path while the job runs
                job,
                workdir=workdir,
                env=env,
                secrets=secrets,
                on_output=on_output,
                cancel=cancel,
                kill_grace=self.kill_grace,
                log_file=log_path,
            )
            self.stores.logs.put_file(log_path)  # re-hashed: the name must match the bytes
            for relpath, digest in outcome.artifacts.items():
                self.stores.artifacts.put_file(workdir / relpath, digest)
        finally:
            log_path.unlink(missing_ok=True)
            if not self.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
        return outcome
