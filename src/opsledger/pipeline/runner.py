"""Run a ``PipelineSpec`` as a DAG: ready jobs in parallel, results on the ledger.

The scheduler is one loop in the calling thread; jobs run on a bounded thread pool
(default: the CPU count) through a ``JobDispatcher``. A job starts once every job it needs
has finished and its condition (default ``success()``) holds; otherwise it is ``skipped``
and never runs. A failed (or timed-out) job fails the run. Cancelling (the event, SIGINT
in the CLI, or ``pipeline cancel`` writing the run's marker) stops running jobs' process
groups and marks what had not started ``cancelled``.

The ledger is reached through ``LedgerAccess``: a function that opens a client and the
signer. A client is opened per write and closed at once (``PerCallClient``), because a
local home has one writer at a time and the steps themselves may call ``opsledger
record``. Run state is written to ``<pipelines>/runs/<run-id>.json`` at every transition.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from opsledger.client.base import LedgerClient, Signer
from opsledger.core import ConfigError, OpsledgerError
from opsledger.pipeline import evidence as ev
from opsledger.pipeline._model import SIGNING_KEY_ENV
from opsledger.pipeline.conditions import ConditionContext
from opsledger.pipeline.dispatch import JobDispatcher, LocalDispatcher
from opsledger.pipeline.execute import JobOutcome
from opsledger.pipeline.logstore import PipelineStores
from opsledger.pipeline.percall import PerCallClient
from opsledger.pipeline.rundeploy import DeployRun
from opsledger.pipeline.runstate import cancel_requested, save_run
from opsledger.pipeline.spec import JobDef, PipelineSpec

__all__ = ["LedgerAccess", "PerCallClient", "PipelineRunner", "RunEvent", "RunResult", "new_run_id"]

FAILED = frozenset({"failure", "timeout"})
SAVE_EVERY = 0.2


def new_run_id(now: float | None = None) -> str:
    """``YYYYMMDD-HHMMSS-xxxxxx`` (UTC): sorts by start time, unique by its random tail."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{_secrets.token_hex(3)}"


@dataclass(frozen=True)
class LedgerAccess:
    """How the runner reaches the ledger: ``connect`` opens a client; ``signer`` signs."""

    connect: Callable[[], LedgerClient]
    signer: Signer


@dataclass(frozen=True)
class RunEvent:
    """A change the progress display shows: ``kind`` is run, job or output."""

    kind: str
    job: str | None
    status: str
    line: str = ""


@dataclass
class RunResult:
    run_id: str
    status: str  # success | failure | cancelled
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tx_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "success"


class PipelineRunner:
    """Runs one pipeline once. ``environ`` is the base environment of every job and where
    ``env:`` secrets are read; ``exclude`` are folders never copied into a job's
    directory (the home, when it lives inside the project)."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        stores: PipelineStores,
        ledger: LedgerAccess | None = None,
        dispatcher: JobDispatcher | None = None,
        concurrency: int | None = None,
        environ: Mapping[str, str] | None = None,
        on_event: Callable[[RunEvent], None] | None = None,
        cancel: threading.Event | None = None,
        commit: str = "unknown",
        run_id: str | None = None,
        exclude: Sequence[Path] = (),
        deploy_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.stores = stores
        self.ledger = ledger
        self.client = PerCallClient(ledger.connect) if ledger is not None else None
        self.dispatcher = dispatcher or LocalDispatcher(stores, spec.root, exclude=exclude)
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self.environ = dict(os.environ if environ is None else environ)
        self.on_event = on_event or (lambda event: None)
        self.cancel = cancel or threading.Event()
        self.commit = commit
        self.run_id = run_id or new_run_id()
        self.exclude = list(exclude)
        self.deploy_options = dict(deploy_options or {})  # extra DeployContext fields
        self._recorded = ev.RecordedResults(self.run_id)
        self._deploys = DeployRun(
            client=self.client,
            signer=ledger.signer if ledger is not None else None,
            stores=stores,
            root=spec.root,
            run_id=self.run_id,
            commit=commit,
            variables=spec.vars,
            cancel=self.cancel,
            exclude=self.exclude,
            options=self.deploy_options,
        )
        self._state_lock = threading.Lock()
        self.state: dict[str, Any] = {
            "run": self.run_id,
            "pipeline": spec.name,
            "source": spec.source,
            "digest": spec.digest,
            "pid": os.getpid(),
            "status": "running",
            "started_at": time.time(),
            "finished_at": None,
            "vars": dict(spec.vars),
            "commit": commit,
            "tx": {},
            "jobs": {
                name: {
                    "status": "pending",
                    "stage": job.stage,
                    "needs": list(job.needs),
                    "started_at": None,
                    "finished_at": None,
                    "duration_ms": None,
                    "exit_code": None,
                    "attempts": 0,
                    "reason": "",
                    "log_digest": None,
                    "artifacts": {},
                }
                for name, job in spec.jobs.items()
            },
        }
        self.outcomes: dict[str, JobOutcome] = {}
        self._available: dict[str, dict[str, str]] = {}
        self._dirty = False
        self._saved_at = 0.0
        self.tx_ids: list[str] = []

    # -- state --
    def _save(self, *, durable: bool = True) -> None:
        with self._state_lock:
            save_run(self.stores.runs, self.state, durable=durable)
            self._dirty = False
            self._saved_at = time.monotonic()

    def _save_soon(self) -> None:
        """Write the state at most every ``SAVE_EVERY`` seconds: a 1,000-job run would
        otherwise spend its time rewriting its own state file."""
        if self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY:
            self._save(durable=False)

    def _job_state(self, name: str, **changes: Any) -> None:
        with self._state_lock:
            self.state["jobs"][name].update(changes)
            self._dirty = True
        self._save_soon()
        if "status" in changes:
            self.on_event(RunEvent("job", name, str(changes["status"])))

    def _write(self, fn: Callable[..., str], *args: Any, **kwargs: Any) -> str | None:
        if self.client is None or self.ledger is None:
            return None
        tx_id = fn(self.client, self.ledger.signer, *args, **kwargs)
        self.tx_ids.append(tx_id)
        return tx_id

    # -- the run --
    def run(self) -> RunResult:
        self._save()
        self.on_event(RunEvent("run", None, "running"))
        begin = time.monotonic()
        try:
            started_tx = self._write(ev.record_pipeline_started, self.spec, self.run_id)
        except BaseException:
            self.state.update(status="failure", finished_at=time.time())
            self._save()  # not left "running": nothing ran
            raise
        if started_tx:
            self.state["tx"]["pipeline.started"] = started_tx
        try:
            self._schedule()
        finally:
            with self._state_lock:
                jobs = self.state["jobs"]
                for job in jobs.values():
                    if job["status"] in ("pending", "running"):
                        job["status"] = "cancelled"
                statuses = {name: job["status"] for name, job in jobs.items()}
            if any(s in FAILED for s in statuses.values()):
                status = "failure"
            elif self.cancel.is_set() or any(s == "cancelled" for s in statuses.values()):
                status = "cancelled"
            else:
                status = "success"
            finished_tx = self._write(
                ev.record_pipeline_finished,
                self.spec,
                self.run_id,
                status=status,
                jobs=statuses,
                duration_ms=int((time.monotonic() - begin) * 1000),
                refs=[started_tx] if started_tx else [],
            )
            with self._state_lock:
                if finished_tx:
                    self.state["tx"]["pipeline.finished"] = finished_tx
                self.state["status"] = status
                self.state["finished_at"] = time.time()
            self._save()
            (self.stores.runs / f"{self.run_id}.cancel").unlink(missing_ok=True)
            self.on_event(RunEvent("run", None, status))
        return RunResult(self.run_id, status, self.state["jobs"], list(self.tx_ids))

    def _schedule(self) -> None:
        order = self.spec.order()
        pending = list(order)
        running: dict[Future[JobOutcome], str] = {}
        done: set[Future[JobOutcome]] = set()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="job") as pool:
            while pending or running:
                try:
                    done = self._round(pool, pending, running, done)
                except BaseException:
                    self.cancel.set()  # leaving: stop the jobs rather than wait for them
                    raise

    def _round(
        self,
        pool: ThreadPoolExecutor,
        pending: list[str],
        running: dict[Future[JobOutcome], str],
        done: set[Future[JobOutcome]],
    ) -> set[Future[JobOutcome]]:
        """Record what finished (``done``), start what is now ready, and wait a little for
        the next jobs to finish (returned: the next round records them). The recording and
        the starting share one ledger session, opened once per round: a local node costs
        tens of milliseconds to open, the largest part of the runner's cost per job."""
        if not self.cancel.is_set() and cancel_requested(self.stores.runs, self.run_id):
            self.cancel.set()
        starting: list[str] = []
        with self._session():
            if done:
                self._complete([(running.pop(future), _result(future)) for future in done])
            for name in list(pending):
                if len(running) + len(starting) >= self.concurrency:
                    break
                decision = self._decide(name)
                if decision == "wait":
                    continue
                pending.remove(name)
                if decision != "run":
                    self._job_state(name, status=decision[0], reason=decision[1])
                    self._inputs(self.spec.jobs[name])  # its dependants read this
                    continue
                starting.append(name)
            for name, future in self._start(pool, starting):
                running[future] = name
        if not running:
            if pending and all(self._decide(n) == "wait" for n in pending):
                raise RuntimeError("the pipeline's DAG cannot progress")  # unreachable
            return set()
        finished, _ = wait(running, timeout=SAVE_EVERY / 2, return_when=FIRST_COMPLETED)
        self._save_soon()
        return finished

    def _session(self) -> contextlib.AbstractContextManager[None]:
        return self.client.session() if self.client is not None else contextlib.nullcontext()

    def _decide(self, name: str) -> str | tuple[str, str]:
        job = self.spec.jobs[name]
        states = [self.state["jobs"][n]["status"] for n in job.needs]
        if any(s in ("pending", "running") for s in states):
            return "wait"
        if self.cancel.is_set():
            return "cancelled", "the run was cancelled"
        ctx = ConditionContext(
            needs_ok=all(s == "success" for s in states),
            needs_failed=any(s in FAILED for s in states),
            cancelled=self.cancel.is_set(),
            values=self._values(job),
        )
        if job.condition is None:
            if ctx.needs_ok:
                return "run"
            failed = [n for n, s in zip(job.needs, states, strict=True) if s != "success"]
            return "skipped", f"needs {', '.join(failed)}, which did not succeed"
        if job.condition.evaluate(ctx):
            return "run"
        return "skipped", f"condition is false: {job.condition.text}"

    def _values(self, job: JobDef) -> dict[str, str]:
        values = {f"vars.{k}": v for k, v in self.spec.vars.items()}
        values.update({f"matrix.{k}": v for k, v in job.matrix.items()})
        values.update({f"env.{k}": v for k, v in self.environ.items()})
        values.update({f"env.{k}": v for k, v in {**self.spec.env, **job.env}.items()})
        return values

    def _inputs(self, job: JobDef) -> tuple[dict[str, Path], dict[str, str]]:
        """The artifacts of every job ``job`` needs, directly or through others (a later
        job's file wins over an earlier one's at the same path). Built from the needs'
        own sets, so a long chain costs linear time, not quadratic."""
        digests = self._available.get(job.name)
        if digests is None:
            digests = {}
            for dep in job.needs:
                known = self._available.get(dep)
                digests.update(known if known is not None else self._inputs(self.spec.jobs[dep])[1])
                outcome = self.outcomes.get(dep)
                if outcome is not None:
                    digests.update(outcome.artifacts)
            self._available[job.name] = digests
        paths = {rel: self.stores.artifacts.path(d) for rel, d in digests.items()}
        return paths, dict(digests)

    def _secrets(self, job: JobDef) -> dict[str, str]:
        values = {}
        for name, ref in job.secrets.items():
            try:
                values[name] = ref.resolve(self.environ)
            except ConfigError as exc:
                raise ConfigError(f"secret {name} ({ref}): {exc.message}") from None
        return values

    def _env(self, job: JobDef) -> dict[str, str]:
        # the runner signs every record itself: no step ever sees its signing key
        inherited = {k: v for k, v in self.environ.items() if k not in SIGNING_KEY_ENV}
        return {
            **inherited,
            **self.spec.env,
            **job.env,
            "OPSLEDGER_PIPELINE": self.spec.name,
            "OPSLEDGER_RUN": self.run_id,
            "OPSLEDGER_JOB": job.name,
        }

    def _start(
        self, pool: ThreadPoolExecutor, names: Sequence[str]
    ) -> list[tuple[str, Future[JobOutcome]]]:
        """Start a round's ready jobs: their ``job.started`` in one batch, then each on the
        pool. A job whose start cannot be recorded (or whose secrets are missing) fails
        without running."""
        started_at = time.time()
        for name in names:
            self._job_state(name, status="running", started_at=started_at)
        jobs = [self.spec.jobs[name] for name in names]
        written: list[str | OpsledgerError | None] = [None] * len(jobs)
        if self.client is not None and self.ledger is not None and jobs:
            signer = self.ledger.signer
            try:
                stxs = [ev.sign_job_started(signer, self.run_id, job) for job in jobs]
                written = list(ev.submit_all(self.client, signer, stxs))
            except OpsledgerError as exc:
                written = [exc] * len(jobs)
        # a queue's workers resolve secret references from their own environment: the
        # runner need not (and, in CI, often cannot) hold the values
        on_worker = bool(getattr(self.dispatcher, "secrets_on_worker", False))
        futures = []
        for job, tx in zip(jobs, written, strict=True):
            try:
                if isinstance(tx, OpsledgerError):
                    raise tx
                if tx:
                    self.tx_ids.append(tx)
                    self.state["tx"][f"job.started:{job.name}"] = tx
                secrets = {} if on_worker else self._secrets(job)
            except OpsledgerError as exc:
                self._complete([(job.name, JobOutcome("failure", reason=exc.message))])
                continue
            futures.append((job.name, pool.submit(self._work, job, secrets)))
        return futures

    def _work(self, job: JobDef, secrets: Mapping[str, str]) -> JobOutcome:
        """One job, on a pool thread: dispatch it, then its ``deploy:`` if it has one."""
        masked = dict(secrets)  # the signing key is not among them (see _env)
        inputs, digests = self._inputs(job)

        def output(line: str) -> None:
            self.on_event(RunEvent("output", job.name, "running", line))

        outcome = self.dispatcher.dispatch(
            self.run_id,
            job,
            inputs,
            env=self._env(job),
            secrets=masked,
            on_output=output,
            cancel=self.cancel,
        )
        if job.deploy is not None and outcome.status == "success":
            outcome = self._deploys.deploy(
                job, outcome, inputs=inputs, digests=digests, secrets=masked, on_line=output
            )
        return outcome

    def _complete(self, finished: Sequence[tuple[str, JobOutcome]]) -> None:
        """Record a round's finished jobs (one batch; exactly once per job: the run's
        results already on the ledger, e.g. written by a queue worker, are not written
        again), then update their state. Their dependants are decided only afterwards,
        in the next round: a job's result is on the ledger before any job that needs it
        starts."""
        results = []
        for name, outcome in finished:
            self.outcomes[name] = outcome
            results.append(ev.FinishedJob(self.spec.jobs[name], outcome, self._inputs_of(name)))
        ids: list[str | OpsledgerError | None] = [None] * len(results)
        if self.client is not None and self.ledger is not None and results:
            ids = list(self._record(self.client, self.ledger.signer, results))
        for (name, done), tx in zip(finished, ids, strict=True):
            outcome = done
            if isinstance(tx, OpsledgerError):
                outcome = replace(
                    done,
                    status="failure",
                    reason=f"recording the result failed: {tx.message}",
                    artifacts={},
                    evidence=None,
                )
            elif tx:
                self.tx_ids.append(tx)
                self.state["tx"][f"job.finished:{name}"] = tx
            self._job_state(
                name,
                status=outcome.status,
                started_at=outcome.started_at or self.state["jobs"][name]["started_at"],
                finished_at=outcome.finished_at or time.time(),
                duration_ms=outcome.duration_ms,
                exit_code=outcome.exit_code,
                attempts=outcome.attempts,
                reason=outcome.reason,
                log_digest=outcome.log_digest,
                artifacts=dict(outcome.artifacts),
            )

    def _record(
        self, client: LedgerClient, signer: Signer, results: Sequence[ev.FinishedJob]
    ) -> list[str | OpsledgerError]:
        try:
            self._recorded.refresh(client)  # only what was appended since the last round
            return ev.record_job_outcomes(
                client, signer, self.run_id, results, commit=self.commit, recorded=self._recorded
            )
        except OpsledgerError:
            pass  # e.g. one job's typed evidence refused: record job by job, each on its own
        out: list[str | OpsledgerError] = []
        for r in results:
            try:
                out.append(
                    ev.record_job_outcome(
                        client,
                        signer,
                        self.run_id,
                        r.job,
                        r.outcome,
                        inputs=r.inputs,
                        commit=self.commit,
                    )
                )
            except OpsledgerError as exc:
                out.append(exc)
        return out

    def _inputs_of(self, name: str) -> dict[str, str]:
        return self._inputs(self.spec.jobs[name])[1]


def _result(future: Future[JobOutcome]) -> JobOutcome:
    try:
        return future.result()
    except Exception as exc:  # a dispatcher bug must not lose the run's record
        return JobOutcome("failure", reason=f"dispatch failed: {type(exc).__name__}: {exc}")
