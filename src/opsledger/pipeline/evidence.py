"""What a pipeline run puts on the ledger, and the rule that a job has one result.

Per run (subject ``run:<run-id>``): ``pipeline.started`` (pipeline, run, file digest, jobs)
and ``pipeline.finished`` (status and every job's status). Per job that started:
``job.started`` and ``job.finished`` (status, exit code, duration, log digest, artifact
digests, attempts). Per job with ``evidence:``, the typed evidence the contracts read, on
subject ``artifact:<digest>`` and citing the ``job.finished`` in its refs:
``build.finished`` (one per built file), ``test.finished`` (counts), ``scan.finished``
(findings by severity).

Exactly once: ``record_job_outcome`` first looks for a ``job.finished`` of the same run and
job and, if there is one, returns its id instead of writing another; the typed evidence is
written after it and checked the same way (by its ref to that ``job.finished``), so a job
redelivered after a crash between the two writes completes the record without doubling
it. The look and the write are two calls, so two recorders of one job at the same instant
could both write; what closes that window:

- on a local home, the callers hold ONE client across the look and the write (the
  runner's round session, the worker's ``PerCallClient.session()``): an open in-process
  node holds the home's writer lock, so no other process can write in between;
- with a shared ``opsledger serve`` (two recorders exist only if the queue redelivered a
  job whose first worker was alive but silent for longer than ``ack_wait``), the node's
  admission rule (``ledger.results``) refuses a second ``job.finished`` for one (run,
  job) with ``AlreadyRecorded`` naming the first; the loser takes that id and writes no
  evidence of its own, since its outcome may differ from the one that stands.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opsledger.client.base import LedgerClient, Signer, all_transactions, submit_signed
from opsledger.core import (
    AlreadyRecorded,
    OpsledgerError,
    ReplayRejected,
    SignedTransaction,
    Subject,
)
from opsledger.pipeline.execute import JobOutcome
from opsledger.pipeline.spec import JobDef, PipelineSpec

__all__ = [
    "FinishedJob",
    "RecordedResults",
    "find_job_finished",
    "job_finished_body",
    "record",
    "record_job_outcome",
    "record_job_outcomes",
    "record_job_started",
    "record_pipeline_finished",
    "record_pipeline_started",
    "sign_job_started",
    "submit_all",
    "typed_evidence",
]


def record(
    client: LedgerClient,
    signer: Signer,
    tx_type: str,
    subject: Subject,
    body: dict[str, Any],
    *,
    refs: Sequence[str] = (),
) -> str:
    return submit_signed(client, signer, signer.sign(tx_type, subject, body, refs)).tx_id


def record_pipeline_started(
    client: LedgerClient, signer: Signer, spec: PipelineSpec, run_id: str
) -> str:
    body = {
        "pipeline": spec.name,
        "run": run_id,
        "digest": spec.digest,
        "source": spec.source,
        "jobs": list(spec.jobs),
    }
    return record(client, signer, "pipeline.started", Subject("run", run_id), body)


def record_pipeline_finished(
    client: LedgerClient,
    signer: Signer,
    spec: PipelineSpec,
    run_id: str,
    *,
    status: str,
    jobs: Mapping[str, str],
    duration_ms: int,
    refs: Sequence[str] = (),
) -> str:
    body = {
        "pipeline": spec.name,
        "run": run_id,
        "digest": spec.digest,
        "status": status,
        "jobs": dict(jobs),
        "duration_ms": duration_ms,
    }
    return record(client, signer, "pipeline.finished", Subject("run", run_id), body, refs=refs)


def sign_job_started(
    signer: Signer, run_id: str, job: JobDef, *, attempt: int = 1
) -> SignedTransaction:
    body: dict[str, Any] = {"run": run_id, "job": job.name, "stage": job.stage}
    if attempt > 1:
        body["attempt"] = attempt
    return signer.sign("job.started", Subject("run", run_id), body)


def record_job_started(
    client: LedgerClient, signer: Signer, run_id: str, job: JobDef, *, attempt: int = 1
) -> str:
    stx = sign_job_started(signer, run_id, job, attempt=attempt)
    return submit_signed(client, signer, stx).tx_id


def find_job_finished(client: LedgerClient, run_id: str, job: str) -> str | None:
    """The id of the run's ``job.finished`` for ``job``, if one is on the ledger."""
    return RecordedResults(run_id).refresh(client).get(job)


class RecordedResults:
    """The ``job.finished`` ids of one run already on the ledger, by job, read
    incrementally: each ``refresh`` asks only for what was appended since the last one
    (``after`` its leaf index), so a runner that checks before every round of results
    pays for the new rows, not for the whole run again (quadratic in a 1,000-job DAG)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.by_job: dict[str, str] = {}
        self._after: int | None = None

    def refresh(self, client: LedgerClient) -> RecordedResults:
        filters: dict[str, Any] = {"type": "job.finished", "subject": f"run:{self.run_id}"}
        while True:
            page = client.list_transactions({**filters, "after": self._after, "limit": 1000})
            for row in page:
                self.by_job.setdefault(str(row["transaction"]["body"].get("job")), row["tx_id"])
                self._after = row["leaf_index"]
            if len(page) < 1000:
                return self

    def get(self, job: str) -> str | None:
        return self.by_job.get(job)


def job_finished_body(run_id: str, job: JobDef, outcome: JobOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run": run_id,
        "job": job.name,
        "stage": job.stage,
        "status": "success" if outcome.status == "success" else "failure",
        "outcome": outcome.status,
        "exit_code": -1 if outcome.exit_code is None else outcome.exit_code,
        "duration_ms": outcome.duration_ms,
        "artifacts": dict(outcome.artifacts),
        "attempts": outcome.attempts,
    }
    if outcome.log_digest:
        body["log_digest"] = outcome.log_digest
    if outcome.reason:
        body["reason"] = outcome.reason[:4000]
    return body


def submit_all(
    client: LedgerClient, signer: Signer, stxs: Sequence[SignedTransaction]
) -> list[str | OpsledgerError]:
    """Submit in one ``submit_many`` (one round trip, the node orders them in as few
    blocks as it can); each item gets its tx id or its own error. An item refused as a
    replay (a nonce collision with another process signing as this actor) is re-signed
    and sent once more, as ``submit_signed`` does for one."""
    if not stxs:
        return []
    if len(stxs) == 1:
        try:
            return [submit_signed(client, signer, stxs[0]).tx_id]
        except OpsledgerError as exc:
            return [exc]
    out: list[str | OpsledgerError] = []
    for stx, result in zip(stxs, client.submit_many(stxs), strict=True):
        if isinstance(result, ReplayRejected):
            try:
                out.append(submit_signed(client, signer, stx).tx_id)
            except OpsledgerError as exc:
                out.append(exc)
        else:
            out.append(result if isinstance(result, OpsledgerError) else result.tx_id)
    return out


@dataclass(frozen=True)
class FinishedJob:
    """One finished job to record: ``inputs`` are the artifacts it got (path → digest)."""

    job: JobDef
    outcome: JobOutcome
    inputs: Mapping[str, str] = field(default_factory=dict)


def record_job_outcomes(
    client: LedgerClient,
    signer: Signer,
    run_id: str,
    results: Sequence[FinishedJob],
    *,
    commit: str = "unknown",
    recorded: RecordedResults | None = None,
) -> list[str | OpsledgerError]:
    """``record_job_outcome`` for many jobs in two batched writes (every ``job.finished``,
    then the typed evidence citing them); ``recorded`` is the caller's up-to-date view of
    the run's results (refreshed here when not given). Per job: its ``job.finished`` id,
    or the error that kept it off the ledger."""
    if recorded is None:
        recorded = RecordedResults(run_id).refresh(client)
    fresh = [r for r in results if recorded.get(r.job.name) is None]
    written = submit_all(
        client,
        signer,
        [
            signer.sign(
                "job.finished", Subject("run", run_id), job_finished_body(run_id, r.job, r.outcome)
            )
            for r in fresh
        ],
    )
    ids: dict[str, str | OpsledgerError] = {}
    lost: set[str] = set()
    for r, result in zip(fresh, written, strict=True):
        existing_id = (
            result.details.get("existing") if isinstance(result, AlreadyRecorded) else None
        )
        if isinstance(existing_id, str):
            # Another recorder's result was admitted between our look and our write (the
            # node allows one per job). Its result stands, and it writes its own evidence:
            # evidence from this attempt, citing that result, could contradict it.
            recorded.by_job[r.job.name] = existing_id
            lost.add(r.job.name)
        else:
            ids[r.job.name] = result
    evidence: list[SignedTransaction] = []
    for r in results:
        if r.job.name in lost:
            continue
        existing = recorded.get(r.job.name)
        tx_id = existing or ids[r.job.name]
        if isinstance(tx_id, OpsledgerError):
            continue
        if not existing:
            recorded.by_job[r.job.name] = tx_id
        for tx_type, subject, body in typed_evidence(
            r.job, r.outcome, inputs=r.inputs, commit=commit, run_id=run_id
        ):
            if existing and _has_evidence(client, tx_type, subject, tx_id, body):
                continue
            evidence.append(signer.sign(tx_type, subject, body, [tx_id]))
    for result in submit_all(client, signer, evidence):
        if isinstance(result, OpsledgerError):
            raise result  # the job.finished stands; a retry (redelivery) completes the rest
    return [recorded.get(r.job.name) or ids[r.job.name] for r in results]


def record_job_outcome(
    client: LedgerClient,
    signer: Signer,
    run_id: str,
    job: JobDef,
    outcome: JobOutcome,
    *,
    inputs: Mapping[str, str] | None = None,
    commit: str = "unknown",
) -> str:
    """Record ``job.finished`` (and the job's typed evidence) once per (run, job); a second
    call returns the first ``job.finished`` id. ``inputs`` are the artifacts the job got
    (relative path → digest): the subject of test and scan evidence."""
    (result,) = record_job_outcomes(
        client, signer, run_id, [FinishedJob(job, outcome, inputs or {})], commit=commit
    )
    if isinstance(result, OpsledgerError):
        raise result
    return result


def _has_evidence(
    client: LedgerClient, tx_type: str, subject: Subject, ref: str, body: Mapping[str, Any]
) -> bool:
    for row in all_transactions(client, {"type": tx_type, "subject": str(subject)}):
        tx = row["transaction"]
        if ref in tx.get("refs", ()) and tx["body"].get("job") == body.get("job"):
            return True
    return False


def _matching(pattern: str | None, paths: Mapping[str, str]) -> list[tuple[str, str]]:
    if pattern is None:
        return []
    return [
        (path, digest)
        for path, digest in sorted(paths.items())
        if path == pattern
        or fnmatch.fnmatch(path, pattern)
        or path.startswith(pattern.rstrip("/") + "/")
    ]


def typed_evidence(
    job: JobDef,
    outcome: JobOutcome,
    *,
    inputs: Mapping[str, str],
    commit: str,
    run_id: str,
) -> list[tuple[str, Subject, dict[str, Any]]]:
    """The typed transactions a job's ``evidence:`` asks for, given its outcome."""
    spec = job.evidence
    if spec is None:
        return []
    common = {"run": run_id, "job": job.name}
    status = "success" if outcome.status == "success" else "failure"
    if spec.type == "build":
        if outcome.status != "success":
            return []
        return [
            (
                "build.finished",
                Subject("artifact", digest),
                {
                    **common,
                    "artifact": spec.name or path,
                    "path": path,
                    "digest": digest,
                    "commit": commit,
                    "status": status,
                },
            )
            for path, digest in _matching(spec.artifact, outcome.artifacts)
        ]
    if outcome.evidence is None:
        return []  # the parser could not read the output: job.finished says why
    if spec.artifact is not None:
        targets = _matching(spec.artifact, {**inputs, **outcome.artifacts})
    else:
        targets = sorted(inputs.items()) if len(inputs) == 1 else []
    details = dict(outcome.evidence.get("details") or {})
    found = []
    for path, digest in targets:
        if spec.type == "test":
            body = {
                **details,
                **common,
                "digest": digest,
                "path": path,
                "suite": spec.name or job.name,
                "passed": int(outcome.evidence.get("passed", 0)),
                "failed": int(outcome.evidence.get("failed", 0)),
                "status": status,
            }
            found.append(("test.finished", Subject("artifact", digest), body))
        else:
            body = {
                **details,
                **common,
                "digest": digest,
                "path": path,
                "scanner": spec.name or spec.parser or "scanner",
                "findings": dict(outcome.evidence.get("findings") or {}),
                "status": status,
            }
            found.append(("scan.finished", Subject("artifact", digest), body))
    return found
