"""A pipeline job's ``deploy:``: after its steps succeed, the runner hands the artifact it
names to ``pipeline.deploy.run_deploy`` with the run's ledger, signer and the home's deploy
settings (``state_dir``, ``protected_environments``: ``DeployContext`` fields the
composition root passes as the runner's ``deploy_options``).

The deploy's own time (a canary's windows, the gate's ledger lookups) counts in the job's
duration and end time: it is what the job spent. Its output joins the job's log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from opsledger.client.base import LedgerClient, Signer
from opsledger.core import OpsledgerError
from opsledger.pipeline.dispatch import prepare_workdir
from opsledger.pipeline.execute import JobOutcome, OutcomeStatus, mask
from opsledger.pipeline.logstore import PipelineStores
from opsledger.pipeline.spec import JobDef

__all__ = ["DeployRun", "release_commits"]


@dataclass
class DeployRun:
    """What a run lends its deploy jobs."""

    client: LedgerClient | None
    signer: Signer | None
    stores: PipelineStores
    root: Path | None
    run_id: str
    commit: str
    variables: Mapping[str, str]
    cancel: threading.Event
    exclude: Sequence[Path] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def commits(self, digest: str) -> list[str]:
        """What a deploy ships: the commits of the release requested for this artifact,
        else the run's own commit (DORA's lead time follows these)."""
        found = release_commits(self.client, digest) if self.client is not None else None
        if found is not None:
            return found
        return [self.commit] if self.commit != "unknown" else []

    def deploy(
        self,
        job: JobDef,
        outcome: JobOutcome,
        *,
        inputs: Mapping[str, Path],
        digests: Mapping[str, str],
        secrets: Mapping[str, str],
        on_line: Callable[[str], None],
    ) -> JobOutcome:
        """Run ``job.deploy`` after the job's successful steps; the returned outcome
        carries the deploy's verdict, its log lines and its time."""
        begin = time.monotonic()
        done = self._deploy(
            job, outcome, inputs=inputs, digests=digests, secrets=secrets, on_line=on_line
        )
        spent = int((time.monotonic() - begin) * 1000)
        return replace(
            done,
            duration_ms=outcome.duration_ms + spent,
            finished_at=(outcome.finished_at + spent / 1000) if outcome.finished_at else 0.0,
        )

    def _deploy(
        self,
        job: JobDef,
        outcome: JobOutcome,
        *,
        inputs: Mapping[str, Path],
        digests: Mapping[str, str],
        secrets: Mapping[str, str],
        on_line: Callable[[str], None],
    ) -> JobOutcome:
        from opsledger.pipeline.deploy import DeployContext, run_deploy

        lines: list[str] = []

        def log(line: str) -> None:
            masked_line = mask(line, secrets)
            lines.append(masked_line)
            on_line(masked_line)

        if self.client is None or self.signer is None:
            return _with(outcome, "failure", "a deploy needs the ledger (run with a home)")
        raw = dict(getattr(job.deploy, "raw", {}) or {})
        wanted = raw.get("artifact")
        candidates = [d for p, d in digests.items() if wanted is None or p == wanted]
        if len(set(candidates)) != 1:
            return _with(
                outcome,
                "failure",
                "deploy: name the artifact to ship (deploy.artifact: PATH of an artifact "
                "of a job it needs)"
                if wanted is None
                else f"deploy: no artifact {wanted}",
            )
        workdir = self.stores.work / self.run_id / f"{job.name}.deploy"
        prepare_workdir(self.root, workdir, inputs, [self.stores.root, *self.exclude])
        version = str(raw.get("version") or self.variables.get("version") or self.commit[:12])
        try:
            result = run_deploy(
                job.deploy,
                DeployContext(
                    client=self.client,
                    signer=self.signer,
                    version=version,
                    artifact_digest=candidates[0],
                    commits=self.commits(candidates[0]),
                    workdir=workdir,
                    log=log,
                    cancel=self.cancel,
                    **self.options,
                ),
            )
        except OpsledgerError as exc:
            return _with(outcome, "failure", f"deploy: {exc.message}")
        log_digest = outcome.log_digest
        if lines:
            previous = self.stores.logs.get(outcome.log_digest) if outcome.log_digest else b""
            log_digest = self.stores.logs.put_bytes(
                previous + "".join(line + "\n" for line in lines).encode()
            )
        status: OutcomeStatus = "success" if result.status == "success" else "failure"
        reason = "" if status == "success" else f"deploy {result.status}: {result.reason}"
        return _with(outcome, status, reason, log_digest=log_digest)


def release_commits(client: LedgerClient, digest: str) -> list[str] | None:
    """The commits of the newest ``release.requested`` for ``digest`` (None if none)."""
    rows = client.list_transactions(
        {"type": "release.requested", "subject": f"artifact:{digest}", "order": "desc", "limit": 1}
    )
    if not rows:
        return None
    return [str(c) for c in rows[0]["transaction"]["body"].get("commits", [])]


def _with(outcome: JobOutcome, status: OutcomeStatus, reason: str, **changes: Any) -> JobOutcome:
    return replace(outcome, status=status, reason=reason, **changes)
