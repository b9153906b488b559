"""Deploy strategies (rolling, blue-green, canary) against targets, with health gates and
automatic rollback, every deploy proven on the ledger.

The pipeline runner hands a job's ``deploy:`` mapping to ``parse_deploy`` when it loads a
pipeline (so config errors surface before anything runs) and calls ``run_deploy`` when
the job runs; ``opsledger deploy`` calls the same two functions.

Invariants of ``run_deploy``:

- A deploy to a protected environment starts only after the newest ``release-gate``
  verdict for the exact artifact digest passed; a refusal records nothing and touches
  nothing (``status: failure``, no tx ids).
- Otherwise it records ``deploy.started`` before touching the target and always records
  ``deploy.finished`` (``success``, ``rolled_back`` or ``failure``) citing it, whatever
  happens in between; a failed gate or a cancel also records ``deploy.rolled_back`` with
  the reason and ``deploy: <tx id of deploy.started>`` before the finish.
- The deployed artifact's SHA-256 is checked against the recorded digest (``process``
  target with ``target.artifact``) before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opsledger.client.base import LedgerClient, Signer, submit_signed
from opsledger.core import Conflict, OpsledgerError, Subject
from opsledger.pipeline.deploy.config import DeploySettings as _Settings
from opsledger.pipeline.deploy.config import KubernetesSettings as _Kubernetes
from opsledger.pipeline.deploy.config import ProcessSettings as _Process
from opsledger.pipeline.deploy.config import ScriptSettings as _Script
from opsledger.pipeline.deploy.config import parse_settings as _parse_settings
from opsledger.pipeline.deploy.gate import require_release_gate as _require_release_gate
from opsledger.pipeline.deploy.strategies import Result as _Result
from opsledger.pipeline.deploy.strategies import run_strategy as _run_strategy
from opsledger.pipeline.deploy.targets.kubernetes import run_kubernetes as _run_kubernetes
from opsledger.pipeline.deploy.targets.process import ProcessTarget as _ProcessTarget
from opsledger.pipeline.deploy.targets.script import ScriptTarget as _ScriptTarget

__all__ = [
    "DeployContext",
    "DeployOutcome",
    "DeploySpec",
    "default_state_dir",
    "parse_deploy",
    "run_deploy",
]


@dataclass(frozen=True)
class DeploySpec:
    """A validated ``deploy:`` mapping of a pipeline job."""

    service: str
    environment: str
    strategy: Literal["rolling", "blue-green", "canary"]
    raw: Mapping[str, Any] = field(default_factory=dict)
    where: str = "deploy"


@dataclass
class DeployContext:
    """What a deploy needs from the run that starts it.

    ``state_dir``: where the ``process`` and ``script`` targets keep what runs (default
    ``<OPSLEDGER_HOME or .opsledger>/deploy``; the runner passes ``<home>/deploy``).
    ``protected_environments``: from ``opsledger.yaml``'s ``deploy.environments``; the
    ``deploy:`` mapping can only add to them. ``fixes``: the incident this deploy is made
    to repair (DORA's rework rate counts these).
    """

    client: LedgerClient
    signer: Signer
    version: str
    artifact_digest: str
    commits: list[str]
    workdir: Path
    log: Callable[[str], None]
    cancel: threading.Event
    state_dir: Path | None = None
    protected_environments: frozenset[str] = frozenset()
    fixes: str | None = None


@dataclass(frozen=True)
class DeployOutcome:
    status: Literal["success", "failure", "rolled_back"]
    reason: str
    tx_ids: tuple[str, ...] = ()


def default_state_dir() -> Path:
    return Path(os.environ.get("OPSLEDGER_HOME") or ".opsledger") / "deploy"


def parse_deploy(raw: Mapping[str, Any], where: str) -> DeploySpec:
    """Validate a job's ``deploy:`` mapping; ``where`` is "file:line" for error messages."""
    settings = _parse_settings(raw, where)
    return DeploySpec(
        service=settings.service,
        environment=settings.environment,
        strategy=settings.strategy,
        raw=dict(raw),
        where=where,
    )


class _Ledger:
    """deploy.* transactions for one deploy, all about ``service:<name>``."""

    def __init__(self, ctx: DeployContext, settings: _Settings) -> None:
        self.ctx = ctx
        self.subject = Subject("service", settings.service)
        self.base: dict[str, Any] = {
            "service": settings.service,
            "environment": settings.environment,
            "version": ctx.version,
            "digest": ctx.artifact_digest,
            "strategy": settings.strategy,
            "commits": list(ctx.commits),
            "target": settings.target.kind,
        }
        self.tx_ids: list[str] = []

    def record(self, tx_type: str, refs: tuple[str, ...] = (), **fields: Any) -> str:
        body = {**self.base, **{k: v for k, v in fields.items() if v is not None}}
        stx = self.ctx.signer.sign(tx_type, self.subject, body, refs)
        receipt = submit_signed(self.ctx.client, self.ctx.signer, stx)
        self.tx_ids.append(receipt.tx_id)
        return receipt.tx_id


def _state_root(settings: _Settings, ctx: DeployContext) -> Path:
    if settings.state_dir:
        return (ctx.workdir / settings.state_dir).resolve()
    return ctx.state_dir or default_state_dir()


class _Busy(Conflict):
    """Another deploy holds this service and environment."""


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One deploy at a time per service and environment on this machine: a second one
    would fight the first over the switch and the state file."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (directory / "deploy.lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Busy(
                f"another deploy is running for {directory.parent.name}/{directory.name}"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_target(settings: _Settings, ctx: DeployContext) -> _Result:
    target_settings = settings.target
    if isinstance(target_settings, _Kubernetes):
        return _run_kubernetes(
            target_settings,
            settings.health,
            version=ctx.version,
            digest=ctx.artifact_digest,
            workdir=ctx.workdir,
            log=ctx.log,
        )
    return _run_local(settings, ctx, _state_root(settings, ctx))


def _run_local(settings: _Settings, ctx: DeployContext, root: Path) -> _Result:
    target_settings = settings.target
    target: _ProcessTarget | _ScriptTarget
    extra: dict[str, object] = {}
    if isinstance(target_settings, _Process):
        if target_settings.artifact is None and settings.artifact is not None:
            # in a pipeline, deploy.artifact names the input that ships: run that file
            target_settings = dataclasses.replace(target_settings, artifact=settings.artifact)
        target = _ProcessTarget(
            target_settings,
            service=settings.service,
            environment=settings.environment,
            version=ctx.version,
            digest=ctx.artifact_digest,
            workdir=ctx.workdir,
            state_root=root,
            http=settings.health.http,
            log=ctx.log,
        )
        target.prepare()
        extra = target.new_extra()
    else:
        assert isinstance(target_settings, _Script)
        target = _ScriptTarget(
            target_settings,
            service=settings.service,
            environment=settings.environment,
            version=ctx.version,
            digest=ctx.artifact_digest,
            workdir=ctx.workdir,
            state_root=root,
            log=ctx.log,
        )
    return _run_strategy(
        settings,
        target,
        version=ctx.version,
        digest=ctx.artifact_digest,
        extra=extra,
        cancel=ctx.cancel,
        log=ctx.log,
    )


def run_deploy(spec: DeploySpec, ctx: DeployContext) -> DeployOutcome:
    """Deploy, gate on health, roll back on failure; record deploy.* on the ledger."""
    settings = _parse_settings(
        spec.raw, spec.where, dict.fromkeys(ctx.protected_environments, True)
    )
    gate_verdict: str | None = None
    if settings.protected:
        try:
            gate_verdict = _require_release_gate(
                ctx.client, ctx.artifact_digest, settings.environment
            )
        except OpsledgerError as refused:
            ctx.log(f"refused: {refused.message}")
            return DeployOutcome("failure", refused.message)
        ctx.log(f"release gate passed for {ctx.artifact_digest} (verdict {gate_verdict[:12]})")
    if isinstance(settings.target, _Kubernetes):
        lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        lock = _exclusive(_state_root(settings, ctx) / settings.service / settings.environment)
    try:
        with lock:
            return _record_and_run(settings, ctx, gate_verdict)
    except _Busy as busy:
        ctx.log(f"refused: {busy.message}")
        return DeployOutcome("failure", busy.message)


def _record_and_run(
    settings: _Settings, ctx: DeployContext, gate_verdict: str | None
) -> DeployOutcome:
    ledger = _Ledger(ctx, settings)
    started = ledger.record(
        "deploy.started",
        (gate_verdict,) if gate_verdict else (),
        status="started",
        gate=gate_verdict,
        fixes=ctx.fixes,
    )
    ctx.log(
        f"deploy {settings.service} {ctx.version} to {settings.environment} "
        f"({settings.strategy}, {settings.target.kind}): started {started[:12]}"
    )
    try:
        result = _run_target(settings, ctx)
    except Exception as exc:
        message = exc.message if isinstance(exc, OpsledgerError) else f"{type(exc).__name__}: {exc}"
        ctx.log(f"deploy failed: {message}")
        ledger.record(
            "deploy.finished", (started,), status="failure", reason=message, deploy=started
        )
        return DeployOutcome("failure", message, tuple(ledger.tx_ids))
    if result.status == "rolled_back":
        ledger.record(
            "deploy.rolled_back",
            (started,),
            status="rolled_back",
            reason=result.reason,
            deploy=started,
        )
    ledger.record(
        "deploy.finished", (started,), status=result.status, reason=result.reason, deploy=started
    )
    ctx.log(f"deploy {result.status}: {result.reason}")
    status: Literal["success", "rolled_back"] = (
        "success" if result.status == "success" else "rolled_back"
    )
    return DeployOutcome(status, result.reason, tuple(ledger.tx_ids))
