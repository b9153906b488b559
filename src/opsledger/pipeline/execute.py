"""Run one pipeline job's steps as processes: the piece a local runner and a remote worker
share.

``execute_job`` is pure process execution in a directory its caller prepared: each step is
``/bin/sh -c CMD`` in its own process group (a new session), so a timeout or a cancel ends
everything the step started (SIGTERM, then SIGKILL after a grace period), and whatever a
finished step left running is killed too. Output is streamed line by line to
``on_output`` with every secret value replaced by ``***``; the log digest is the SHA-256 of
exactly those masked lines (each followed by a newline), so the caller can store the log
and the digest will match. Retries re-run the whole job. Artifacts are hashed after the
last step; a job whose artifact pattern matched nothing fails, since evidence about a
missing file would be a lie.

A job with ``evidence: {type: test|scan}`` hands its last step's output to the named
parser (``pipeline.parsers``), which then judges that step instead of its exit status
alone (bandit exits 1 when it found issues; that is a finished scan, not a broken one).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

from opsledger.core import InvalidInput
from opsledger.pipeline.parsers import JobOutput, Parsed, get_parser
from opsledger.pipeline.spec import SEVERITIES, JobDef

__all__ = [
    "JobOutcome",
    "OutcomeStatus",
    "collect_artifacts",
    "execute_job",
    "file_digest",
    "mask",
]

OutcomeStatus = Literal["success", "failure", "timeout", "cancelled", "skipped"]
KEEP_BYTES = 8 * 1024 * 1024
"""How much of the last step's stdout/stderr is kept for an evidence parser."""
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job. ``artifacts`` maps relative paths to ``sha256:<hex>``;
    ``evidence`` holds a parser's counts or findings (plain JSON) for test/scan jobs;
    ``started_at``/``finished_at`` are Unix times (seconds) of the first attempt's start
    and the last one's end."""

    status: OutcomeStatus
    exit_code: int | None = None
    duration_ms: int = 0
    log_digest: str | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0
    reason: str = ""
    evidence: Mapping[str, Any] | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_ms": self.duration_ms,
            "log_digest": self.log_digest,
            "artifacts": dict(self.artifacts),
            "attempts": self.attempts,
            "reason": self.reason,
            "evidence": dict(self.evidence) if self.evidence is not None else None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobOutcome:
        evidence = data.get("evidence")
        return cls(
            status=data["status"],
            exit_code=data.get("exit_code"),
            duration_ms=int(data.get("duration_ms", 0)),
            log_digest=data.get("log_digest"),
            artifacts=dict(data.get("artifacts") or {}),
            attempts=int(data.get("attempts", 0)),
            reason=str(data.get("reason", "")),
            evidence=dict(evidence) if evidence is not None else None,
            started_at=float(data.get("started_at", 0.0)),
            finished_at=float(data.get("finished_at", 0.0)),
        )


def mask(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value (and each line of a multi-line one) as ``***``."""
    values: set[str] = set()
    for value in secrets.values():
        if value:
            values.add(value)
            values.update(part for part in value.splitlines() if len(part) >= 3)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def collect_artifacts(workdir: Path, patterns: tuple[str, ...]) -> dict[str, str]:
    """Hash the files ``patterns`` name under ``workdir`` (a directory: all files in it).
    Raises ``InvalidInput`` naming a pattern that matched nothing or escaped the folder."""
    root = workdir.resolve()
    found: dict[str, str] = {}
    for pattern in patterns:
        matches = sorted(root.glob(pattern))
        files: list[Path] = []
        for match in matches:
            files.extend(
                sorted(p for p in match.rglob("*") if p.is_file()) if match.is_dir() else [match]
            )
        if not files:
            raise InvalidInput(f"artifact {pattern} was not produced")
        for path in files:
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                raise InvalidInput(f"artifact {pattern} points outside the job's directory")
            found[path.relative_to(root).as_posix()] = file_digest(resolved)
    return found


class _Log:
    """Masks, splits into lines, forwards and hashes the job's output, and appends it to
    ``file`` (if given) as exactly the bytes the digest covers, a line at a time."""

    def __init__(
        self,
        secrets: Mapping[str, str],
        on_output: Callable[[str], None],
        file: BinaryIO | None = None,
    ) -> None:
        self.secrets = secrets
        self.on_output = on_output
        self.file = file
        self.digest = hashlib.sha256()
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        masked = mask(text, self.secrets)
        data = masked.encode("utf-8", "replace") + b"\n"
        with self.lock:
            self.digest.update(data)
            if self.file is not None:
                self.file.write(data)
                self.file.flush()  # `pipeline logs` reads it while the job runs
        self.on_output(masked)


class _Stream:
    def __init__(self, log: _Log, keep: bool) -> None:
        self.log = log
        self.pending = b""
        self.kept = bytearray()
        self.keep = keep
        self.dropped = False

    def feed(self, chunk: bytes) -> None:
        if self.keep:
            self.kept.extend(chunk)
            if len(self.kept) > KEEP_BYTES:
                del self.kept[: len(self.kept) - KEEP_BYTES]
                self.dropped = True
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            self.log.line(raw.decode("utf-8", "replace").rstrip("\r"))
        if len(self.pending) > MAX_LINE:
            self.log.line(self.pending.decode("utf-8", "replace"))
            self.pending = b""

    def close(self) -> None:
        if self.pending:
            self.log.line(self.pending.decode("utf-8", "replace").rstrip("\r"))
            self.pending = b""


@dataclass
class _StepResult:
    exit_code: int | None
    ended: Literal["exited", "timeout", "cancelled", "error"]
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_dropped: bool = False
    stderr_dropped: bool = False
    error: str = ""


def execute_job(
    job: JobDef,
    *,
    workdir: Path,
    env: Mapping[str, str],
    secrets: Mapping[str, str],
    on_output: Callable[[str], None],
    cancel: threading.Event,
    kill_grace: float = 5.0,
    die_with_parent: bool = False,
    log_file: Path | None = None,
) -> JobOutcome:
    """Run ``job``'s steps in ``workdir`` with ``env`` (the whole environment) plus the
    ``secrets`` (name → value; masked in the output). Never raises for a job's own
    failure: the outcome says what happened. ``log_file`` receives the masked log as
    it is written, byte for byte what ``log_digest`` covers (the log is never held in
    memory).

    ``die_with_parent`` (Linux): if this process is killed outright (SIGKILL, OOM) while a
    step runs, the step's whole process group is killed too, instead of running on as an
    orphan (a worker's job is redelivered elsewhere; its old copy must not keep going)."""
    with contextlib.ExitStack() as stack:
        file = stack.enter_context(log_file.open("wb")) if log_file is not None else None
        return _execute(
            job,
            workdir=workdir,
            env=env,
            log=_Log(secrets, on_output, file),
            secrets=secrets,
            cancel=cancel,
            kill_grace=kill_grace,
            die_with_parent=die_with_parent,
        )


def _execute(
    job: JobDef,
    *,
    workdir: Path,
    env: Mapping[str, str],
    log: _Log,
    secrets: Mapping[str, str],
    cancel: threading.Event,
    kill_grace: float,
    die_with_parent: bool,
) -> JobOutcome:
    full_env = {**env, **secrets}
    started_at = time.time()
    begin = time.monotonic()
    attempts = 0
    outcome: tuple[OutcomeStatus, int | None, str, Mapping[str, Any] | None, dict[str, str]]
    outcome = ("failure", None, "no attempt ran", None, {})
    while attempts <= job.retries:
        attempts += 1
        if attempts > 1:
            log.line(f"--- attempt {attempts} of {job.retries + 1} ---")
        outcome = _attempt(
            job,
            workdir,
            full_env,
            log,
            cancel,
            kill_grace=kill_grace,
            die_with_parent=die_with_parent,
        )
        if outcome[0] in ("success", "cancelled"):
            break
    status, exit_code, reason, evidence, artifacts = outcome
    return JobOutcome(
        status=status,
        exit_code=exit_code,
        duration_ms=max(0, int((time.monotonic() - begin) * 1000)),
        log_digest="sha256:" + log.digest.hexdigest(),
        artifacts=artifacts,
        attempts=attempts,
        reason=reason,
        evidence=evidence,
        started_at=started_at,
        finished_at=time.time(),
    )


def _attempt(
    job: JobDef,
    workdir: Path,
    env: Mapping[str, str],
    log: _Log,
    cancel: threading.Event,
    *,
    kill_grace: float,
    die_with_parent: bool = False,
) -> tuple[OutcomeStatus, int | None, str, Mapping[str, Any] | None, dict[str, str]]:
    deadline = time.monotonic() + job.timeout
    parser_name = job.evidence.parser if job.evidence and job.evidence.type != "build" else None
    exit_code: int | None = None
    evidence: Mapping[str, Any] | None = None
    for index, step in enumerate(job.steps):
        if cancel.is_set():
            return "cancelled", exit_code, "cancelled before " + step.name, None, {}
        last = index == len(job.steps) - 1
        unnamed = step.name.startswith("step ")
        log.line(f"$ {step.run}" if unnamed else f"$ {step.name}: {step.run}")
        result = _run_step(
            step.run,
            workdir,
            env=env,
            log=log,
            cancel=cancel,
            deadline=deadline,
            kill_grace=kill_grace,
            keep=last and parser_name is not None,
            die_with_parent=die_with_parent,
        )
        exit_code = result.exit_code
        if result.ended == "error":
            return "failure", None, result.error, None, {}
        if result.ended == "timeout":
            return (
                "timeout",
                exit_code,
                f"timed out after {job.timeout:g} s; process group killed",
                None,
                {},
            )
        if result.ended == "cancelled":
            return "cancelled", exit_code, "cancelled; process group killed", None, {}
        if last and parser_name is not None:
            ok, reason, evidence = _judge(job, parser_name, result)
            if not ok:
                log.line(f"! {reason}")
                return "failure", exit_code, reason, evidence, {}
        elif exit_code != 0:
            reason = f"{step.name} exited with status {exit_code}"
            return "failure", exit_code, reason, None, {}
    try:
        artifacts = collect_artifacts(workdir, job.artifacts)
    except (InvalidInput, OSError) as exc:
        reason = exc.message if isinstance(exc, InvalidInput) else f"artifacts: {exc}"
        log.line(f"! {reason}")
        return "failure", exit_code, reason, evidence, {}
    return "success", exit_code, "", evidence, artifacts


def _judge(
    job: JobDef, parser_name: str, result: _StepResult
) -> tuple[bool, str, Mapping[str, Any] | None]:
    assert job.evidence is not None  # only evidence jobs have a parser
    output = JobOutput(
        exit_code=result.exit_code if result.exit_code is not None else -1,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_truncated=result.stdout_dropped,
        stderr_truncated=result.stderr_dropped,
    )
    try:
        parsed: Parsed = get_parser(parser_name)(output)
    except InvalidInput as exc:
        return False, exc.message, None
    except Exception as exc:  # a parser bug must not lose the job's record
        return False, f"parser {parser_name} failed: {type(exc).__name__}: {exc}", None
    if job.evidence.type == "scan":
        findings = dict(parsed.findings or {})
        evidence: dict[str, Any] = {"findings": findings, "details": dict(parsed.details)}
        if job.evidence.fail_on is not None:
            levels = SEVERITIES[: SEVERITIES.index(job.evidence.fail_on) + 1]
            hits = {level: findings.get(level, 0) for level in levels if findings.get(level, 0)}
            if hits:
                summary = ", ".join(f"{n} {level}" for level, n in hits.items())
                return False, f"scan found {summary} (fail_on: {job.evidence.fail_on})", evidence
        return True, "", evidence
    evidence = {
        "passed": parsed.passed or 0,
        "failed": parsed.failed or 0,
        "details": dict(parsed.details),
    }
    if not parsed.ok:
        return (
            False,
            f"tests failed: {parsed.passed or 0} passed, {parsed.failed or 0} failed "
            f"(exit {output.exit_code})",
            evidence,
        )
    return True, "", evidence


def _run_step(
    command: str,
    workdir: Path,
    *,
    env: Mapping[str, str],
    log: _Log,
    cancel: threading.Event,
    deadline: float,
    kill_grace: float,
    keep: bool,
    die_with_parent: bool = False,
) -> _StepResult:
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=workdir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, ended as one
        )
    except OSError as exc:
        return _StepResult(None, "error", error=f"could not start the step: {exc.strerror or exc}")
    guard = _start_guard(proc.pid) if die_with_parent else None
    out, err = _Stream(log, keep), _Stream(log, keep)
    ended: Literal["exited", "timeout", "cancelled"] = "exited"
    try:
        assert proc.stdout is not None  # PIPE was asked for
        assert proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while not _has_exited(proc.pid):
                if cancel.is_set() or time.monotonic() >= deadline:
                    ended = "cancelled" if cancel.is_set() else "timeout"
                    _stop_group(proc.pid, sel, kill_grace)
                    break
                _read_ready(sel, 0.05)
            # The leader is gone (a zombie until reaped, so its group id is still ours):
            # end whatever it left behind, then drain the pipes briefly.
            _kill_group(proc.pid, signal.SIGKILL)
            drain_until = time.monotonic() + 2.0
            while sel.get_map() and time.monotonic() < drain_until:
                _read_ready(sel, 0.05)
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
    finally:
        _kill_group(proc.pid, signal.SIGKILL)
        if guard is not None:
            guard.kill()  # SIGKILL: its SIGTERM handler is for this process's death only
            guard.wait()
        code = proc.wait()
        out.close()
        err.close()
    return _StepResult(
        exit_code=code,
        ended=ended,
        stdout=bytes(out.kept),
        stderr=bytes(err.kept),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
    )


_GUARD = """
import ctypes, os, signal, sys
group, parent = int(sys.argv[1]), int(sys.argv[2])
def end(*_):
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
    os._exit(0)
signal.signal(signal.SIGTERM, end)
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    end()  # the parent died before prctl took effect
while True:
    signal.pause()
"""


def _start_guard(group: int) -> subprocess.Popen[bytes] | None:
    """A watchdog that kills the step's process group when this thread's process dies.

    ``PR_SET_PDEATHSIG`` is the kernel's way to tell a child its parent died, but only the
    direct child gets it, and a step's shell may have started children of its own that
    would be orphaned, not killed. So a tiny process of ours (in its own session, so a
    signal to the worker's group does not take it first) asks for SIGTERM on the death
    of its parent and answers it with SIGKILL to the step's whole group. Written by hand:
    no library does this; ``unshare --kill-child`` needs user namespaces. On other
    systems (no ``prctl``) the guard exits and steps behave as without it.
    """
    if not hasattr(os, "waitid") or not os.path.exists("/proc/self"):
        return None  # not Linux
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD, str(group), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None  # the step still runs; only the orphan protection is missing


def _stop_group(pid: int, sel: selectors.BaseSelector, grace: float) -> None:
    _kill_group(pid, signal.SIGTERM)
    until = time.monotonic() + grace
    while time.monotonic() < until and not _has_exited(pid):
        _read_ready(sel, 0.05)
    _kill_group(pid, signal.SIGKILL)


def _read_ready(sel: selectors.BaseSelector, wait: float) -> None:
    if not sel.get_map():
        time.sleep(wait)
        return
    for key, _ in sel.select(timeout=wait):
        stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
        chunk = os.read(stream.fileno(), 65536)
        if chunk:
            key.data.feed(chunk)
        else:
            sel.unregister(stream)
            stream.close()


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` exited, without reaping it (WNOWAIT keeps its group id ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
