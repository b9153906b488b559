"""What a worker does with one job message, by kind: ``PipelineJobHandler`` runs a
pipeline job with ``execute_job`` and records it with the exactly-once
``record_job_outcome``; ``ContractJobHandler`` runs a contract-requested job (a scan, a
regression test) with the contracts' ``LocalExecutor``. Both look at the ledger first, so a
redelivered job whose result is already recorded is answered from the ledger, not re-run.
The worker loop (``pipeline.worker``) owns the queue: heartbeats, publish, ack.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opsledger.client.base import LedgerClient, Signer
from opsledger.core import ConfigError, InvalidInput
from opsledger.pipeline._model import refuse_signing_key
from opsledger.pipeline.evidence import find_job_finished, record_job_outcome
from opsledger.pipeline.execute import JobOutcome, execute_job
from opsledger.pipeline.jobs import JobRequest, JobSpec, LocalExecutor
from opsledger.pipeline.percall import PerCallClient
from opsledger.pipeline.queue import (
    JobMessage,
)
from opsledger.pipeline.spec import JobDef

__all__ = [
    "ContractJobHandler",
    "Handled",
    "JobHandler",
    "OnDemandClient",
    "PipelineJobHandler",
    "Upload",
    "contract_job_message",
    "resolve_secret_refs",
]


class Upload(Protocol):
    """The Object Store, for a handler running in a thread."""

    def files(self, files: Mapping[str, Path]) -> str | None:
        """Store ``{relpath: path}``; returns the manifest digest (None: no files)."""

    def data(self, data: bytes) -> str:
        """Store bytes; returns their digest."""

    def file(self, path: Path) -> str:
        """Store one file, streamed (a job's log can be larger than memory)."""

    def manifest(self, entries: Mapping[str, str]) -> str | None:
        """Store a manifest of already stored files ``{relpath: digest}``."""

    def output(self, line: str) -> None:
        """Send one (masked) output line to whoever submitted the job, live."""


@dataclass(frozen=True, slots=True)
class Handled:
    """A job's result as recorded on the ledger (``replayed``: found there, not run)."""

    outcome: dict[str, Any]
    tx_id: str | None
    artifacts: str | None = None
    replayed: bool = False


class JobHandler(Protocol):
    def handle(
        self,
        message: JobMessage,
        *,
        workdir: Path,
        cancel: threading.Event,
        upload: Upload,
        worker: str,
    ) -> Handled:
        """Return the job's recorded result: the one already on the ledger, or run the
        job in ``workdir`` and record it exactly once. Raise to have it redelivered."""


def resolve_secret_refs(
    refs: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{NAME: "env:VAR" | "file:/path"}`` -> values, from this worker's environment.
    Errors name the reference, never a value."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for name, ref in refs.items():
        scheme, _, target = ref.partition(":")
        try:
            refuse_signing_key(scheme, target, env)
        except ConfigError as exc:
            raise InvalidInput(f"secret {name}: {exc.message}", field="secrets") from None
        if scheme == "env" and target:
            if target not in env:
                raise InvalidInput(
                    f"secret {name}: {ref} is not set on this worker", field="secrets"
                )
            values[name] = env[target]
        elif scheme == "file" and target:
            try:
                values[name] = Path(target).read_text().rstrip("\n")
            except OSError as exc:
                raise InvalidInput(
                    f"secret {name}: cannot read {ref}: {exc.strerror}", field="secrets"
                ) from None
        else:
            raise InvalidInput(
                f"secret {name}: reference must be env:VAR or file:/path", field="secrets"
            )
    return values


OnDemandClient = PerCallClient
"""A worker must not hold the home's writer lock while a job runs for minutes (other
workers, the runner and the CLI write too): a client per call (P3's name, kept)."""


# -- contract jobs (scans, regression suites a release request starts) --

_EVIDENCE_TYPES = ("scan.finished", "test.finished", "job.finished")


def contract_job_message(request: JobRequest, *, inputs: str | None) -> JobMessage:
    """The queue message for a contract-requested job (``pipeline.jobs.JobRequest``)."""
    spec = request.spec
    return JobMessage(
        kind="contract",
        run=request.run,
        job=spec.name,
        spec={
            "spec": {
                "name": spec.name,
                "command": list(spec.command),
                "timeout": spec.timeout,
                "cwd": spec.cwd,
                "records": spec.records,
                "parser": spec.parser,
                "shell": spec.shell,
            },
            "digest": request.digest,
            "trigger": request.trigger,
        },
        inputs=inputs,
        env=dict(spec.env),
    )


def _contract_request(message: JobMessage) -> JobRequest:
    spec_data = message.spec.get("spec")
    if not isinstance(spec_data, dict):
        raise InvalidInput("contract job message: spec.spec must be an object", field="spec")
    spec = JobSpec.from_mapping({**spec_data, "env": message.env}, where="spec")
    return JobRequest(
        spec=spec,
        digest=str(message.spec.get("digest")),
        trigger=str(message.spec.get("trigger")),
        run=message.run,
    )


class ContractJobHandler:
    """Runs contract jobs with ``LocalExecutor`` (which records ``scan.finished`` /
    ``test.finished`` / ``job.finished``), after looking for that record first."""

    def __init__(self, client_factory: Callable[[], LedgerClient], signer: Signer) -> None:
        self.client = OnDemandClient(client_factory)
        self.signer = signer

    def _recorded(self, request: JobRequest) -> dict[str, Any] | None:
        rows: list[dict[str, Any]] = self.client.list_transactions(
            {"subject": f"artifact:{request.digest}", "limit": 1000, "order": "desc"}
        )
        for row in rows:
            tx = row["transaction"]
            body = tx.get("body") or {}
            if (
                tx.get("type") in _EVIDENCE_TYPES
                and body.get("run") == request.run
                and body.get("job") == request.spec.name
            ):
                return row
        return None

    def handle(
        self,
        message: JobMessage,
        *,
        workdir: Path,
        cancel: threading.Event,
        upload: Upload,
        worker: str,
    ) -> Handled:
        request = _contract_request(message)
        found = self._recorded(request)
        if found is not None:
            tx = found["transaction"]
            return Handled(
                outcome={"recorded": tx["type"], **tx["body"]}, tx_id=found["tx_id"], replayed=True
            )
        base_env = {**os.environ, "OPSLEDGER_WORKER": worker}
        executor = LocalExecutor(self.client, self.signer, workdir=workdir, base_env=base_env)
        result = executor.run(request)
        return Handled(
            outcome={"recorded": result.recorded, "status": result.status, **result.evidence},
            tx_id=result.tx_id,
        )


# -- pipeline jobs --

_KEY_ENV = ("OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE")


def _outcome_from_body(body: Mapping[str, Any]) -> JobOutcome:
    """The outcome a ``job.finished`` body records (for a redelivered job)."""
    return JobOutcome(
        status=body.get("outcome") or ("success" if body.get("status") == "success" else "failure"),
        exit_code=None if body.get("exit_code", -1) == -1 else int(body["exit_code"]),
        duration_ms=int(body.get("duration_ms", 0)),
        log_digest=body.get("log_digest"),
        artifacts=dict(body.get("artifacts") or {}),
        attempts=int(body.get("attempts", 0)),
        reason=str(body.get("reason", "")),
    )


class PipelineJobHandler:
    """Runs pipeline jobs with ``execute_job`` and records them with
    ``record_job_outcome`` (exactly once per run and job), after looking on the ledger.

    The job's artifacts and its log are uploaded to the Object Store *before* the result
    is recorded, so a recorded digest can always be fetched. The job's environment is
    this worker's, without its signing key, plus the message's variables and the
    secrets resolved here."""

    def __init__(
        self,
        client_factory: Callable[[], LedgerClient],
        signer: Signer,
        *,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.client = PerCallClient(client_factory)
        self.signer = signer
        self.base_env = base_env

    def handle(
        self,
        message: JobMessage,
        *,
        workdir: Path,
        cancel: threading.Event,
        upload: Upload,
        worker: str,
    ) -> Handled:
        raw_job = message.spec.get("job")
        if not isinstance(raw_job, dict):
            raise InvalidInput("pipeline job message: spec.job must be an object", field="spec")
        try:
            job = JobDef.from_dict(raw_job)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"pipeline job message: bad job: {exc!r}", field="spec") from None
        found = find_job_finished(self.client, message.run, job.name)
        if found is not None:
            body = self.client.get_transaction(found)["transaction"]["body"]
            outcome = _outcome_from_body(body)
            return Handled(
                outcome=outcome.to_dict(),
                tx_id=found,
                artifacts=upload.manifest(outcome.artifacts),
                replayed=True,
            )
        secrets = resolve_secret_refs(message.secrets)
        base = dict(os.environ if self.base_env is None else self.base_env)
        for name in _KEY_ENV:
            base.pop(name, None)
        env = {**base, **message.env, "OPSLEDGER_WORKER": worker}
        # The log is spooled to a file beside the job's directory and streamed to the
        # Object Store: a chatty job must not grow the worker's memory. Its bytes are
        # the (masked) lines joined by newlines, which is what ``log_digest`` covers.
        log_path = workdir.parent / f"{workdir.name}.log"
        try:
            outcome = execute_job(
                job,
                workdir=workdir,
                env=env,
                secrets=secrets,
                on_output=upload.output,
                cancel=cancel,
                die_with_parent=True,  # a SIGKILLed worker's job must not run on
                log_file=log_path,
            )
            upload.file(log_path)
        finally:
            log_path.unlink(missing_ok=True)
        manifest = upload.files({rel: workdir / rel for rel in outcome.artifacts})
        raw_inputs = message.spec.get("artifact_inputs") or {}
        # One client for the look-and-write: on a local home it holds the writer lock
        # from the check to the write, so no other worker can record this job in between
        # (see ``evidence`` on what remains with a shared server).
        with self.client.session():
            tx_id = record_job_outcome(
                self.client,
                self.signer,
                message.run,
                job,
                outcome,
                inputs={str(k): str(v) for k, v in dict(raw_inputs).items()},
                commit=str(message.spec.get("commit") or "unknown"),
            )
        return Handled(outcome=outcome.to_dict(), tx_id=tx_id, artifacts=manifest)


# -- the loop --
