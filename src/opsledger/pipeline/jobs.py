"""Jobs: the small interface between "a contract asks for a scan" and "something runs it".

A contract only decides; when it wants evidence (run the security scan and the regression
suite on ``release.requested``) it names jobs. A ``JobExecutor`` runs one ``JobRequest`` and
records its result on the ledger. ``LocalExecutor`` runs the command on this machine; the
pipeline runner's remote workers implement the same one-method protocol.

Invariants of ``LocalExecutor.run``:

- Every run leaves exactly one transaction, signed by the executor's signer, with subject
  ``artifact:<digest>`` and ``refs=[trigger]``: the ``scan.finished`` / ``test.finished``
  evidence the spec asks for when the tool produced a result that could be read, and
  otherwise (timeout, command could not start, unreadable output, or a spec that records
  nothing) ``job.finished`` with ``status: failure`` and the reason. A scan that timed out is
  never written down as "0 findings".
- Each body carries ``job``, ``run``, ``exit_code``, ``output_digest``, ``duration_ms`` and
  ``command``. ``output_digest`` is the SHA-256 of all the combined output, in the order it
  arrived (as a ``2>&1`` log would read), however large; only the last ``keep_bytes`` of each
  stream are kept in memory for parsing. ``exit_code`` is -1 when no process ran and minus
  the signal number when one was killed.
- The command runs in its own process group (a new session); on timeout the whole group gets
  SIGTERM, then SIGKILL after ``kill_grace`` seconds, and whatever is left of the group when
  the command exits is killed too: no job outlives its run.
- The command never sees the executor's signing key (``OPSLEDGER_KEY*`` are removed from
  its environment), and ``env`` additions are not recorded, so secrets belong there rather
  than in ``command``, which is recorded verbatim.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal, Protocol

import structlog

from opsledger.client.base import LedgerClient, Signer
from opsledger.core import (
    Clock,
    ConfigError,
    InvalidInput,
    ReplayRejected,
    Subject,
    SystemClock,
    format_ts,
)
from opsledger.pipeline.parsers import (
    COUNT_PARSERS,
    PARSERS,
    SCAN_PARSERS,
    JobOutput,
    Parsed,
    get_parser,
)

__all__ = [
    "RECORD_TYPES",
    "JobExecutor",
    "JobRequest",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "LocalExecutor",
]

JobStatus = Literal["success", "failure", "timeout", "error"]
RecordType = Literal["scan.finished", "test.finished"]
RECORD_TYPES: frozenset[str] = frozenset({"scan.finished", "test.finished"})

_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TX_ID = re.compile(r"^[0-9a-f]{64}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_SECRET_ENV = ("OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE")
_MAX_TIMEOUT = 24 * 3600.0
_SPEC_KEYS = frozenset({"name", "command", "timeout", "cwd", "env", "records", "parser", "shell"})


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run. ``command`` is an argv list, run without a shell; with ``shell=True``
    (explicit, never implied) it must be one string, run by ``/bin/sh -c``.

    ``records`` is the evidence type the result becomes (None: only ``job.finished``);
    ``parser`` names an output parser (see ``parsers.PARSERS``). A ``scan.finished`` job
    needs a scanner parser and a ``test.finished`` job a counting one, so that evidence
    always has real numbers. Invalid specs raise ``ConfigError`` naming the key.
    """

    name: str
    command: Sequence[str]
    timeout: float = 600.0
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    records: RecordType | None = None
    parser: str = "exit-code"
    shell: bool = False

    def __post_init__(self) -> None:
        # Freeze the containers: a spec is shared between threads and runs.
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        self._check()

    def _check(self) -> None:
        if not isinstance(self.name, str) or not _JOB_NAME.match(self.name):
            raise ConfigError(
                f"job name must match {_JOB_NAME.pattern}, got {self.name!r}", key="name"
            )
        if not self.command or not all(
            isinstance(arg, str) and "\0" not in arg for arg in self.command
        ):
            raise ConfigError("command must be a non-empty list of strings", key="command")
        if self.shell and len(self.command) != 1:
            raise ConfigError("with shell: true, command must be one string", key="command")
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not 0 < self.timeout <= _MAX_TIMEOUT
        ):
            raise ConfigError(
                f"timeout must be seconds in (0, {_MAX_TIMEOUT:.0f}], got {self.timeout!r}",
                key="timeout",
            )
        if self.cwd is not None and not isinstance(self.cwd, str):
            raise ConfigError("cwd must be a path string", key="cwd")
        for name, value in self.env.items():
            if not isinstance(name, str) or not name or "=" in name or not isinstance(value, str):
                raise ConfigError(f"env entry {name!r} must map a name to a string", key="env")
        if self.records is not None and self.records not in RECORD_TYPES:
            raise ConfigError(
                f"records must be scan.finished, test.finished or null, got {self.records!r}",
                key="records",
            )
        get_parser(self.parser)  # ConfigError(key="parser") when unknown
        if self.records == "scan.finished" and self.parser not in SCAN_PARSERS:
            raise ConfigError(
                f"a scan.finished job needs a scanner parser ({', '.join(sorted(SCAN_PARSERS))})",
                key="parser",
            )
        if self.records == "test.finished" and self.parser not in COUNT_PARSERS:
            raise ConfigError(
                f"a test.finished job needs {' or '.join(sorted(COUNT_PARSERS))}", key="parser"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "job") -> JobSpec:
        """Build a spec from YAML/JSON data; errors name the key as ``<where>.<key>``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping", key=where)
        unknown = sorted(set(data) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key", key=f"{where}.{unknown[0]}")
        for required in ("name", "command"):
            if required not in data:
                raise ConfigError(f"{where}.{required} is required", key=f"{where}.{required}")
        command = data["command"]
        if isinstance(command, str) and not data.get("shell", False):
            raise ConfigError(
                f"{where}.command: give a list of arguments (or set shell: true)",
                key=f"{where}.command",
            )
        if not isinstance(data.get("shell", False), bool):
            raise ConfigError(f"{where}.shell must be true or false", key=f"{where}.shell")
        if not isinstance(data.get("env") or {}, Mapping):
            raise ConfigError(f"{where}.env must be a mapping", key=f"{where}.env")
        try:
            return cls(
                name=data["name"],
                command=[command] if isinstance(command, str) else list(command),
                timeout=data.get("timeout", 600.0),
                cwd=data.get("cwd"),
                env=dict(data.get("env") or {}),
                records=data.get("records"),
                parser=data.get("parser", "exit-code"),
                shell=data.get("shell", False),
            )
        except ConfigError as exc:
            key = f"{where}.{exc.details.get('key', '')}".rstrip(".")
            raise ConfigError(f"{key}: {exc.message}", key=key) from None
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}", key=where) from None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job to run for one artifact, because of one trigger transaction."""

    spec: JobSpec
    digest: str
    trigger: str
    run: str

    def __post_init__(self) -> None:
        if not isinstance(self.digest, str) or not _DIGEST.match(self.digest):
            raise InvalidInput(f"digest must be sha256:<hex>, got {self.digest!r}", field="digest")
        if not isinstance(self.trigger, str) or not _TX_ID.match(self.trigger):
            raise InvalidInput(
                f"trigger must be a transaction id, got {self.trigger!r}", field="trigger"
            )
        if not isinstance(self.run, str) or not _RUN_ID.match(self.run):
            raise InvalidInput(f"run must match {_RUN_ID.pattern}, got {self.run!r}", field="run")


@dataclass(frozen=True, slots=True)
class JobResult:
    """How a run ended and what it left on the ledger.

    ``status``: success / failure (the tool ran; its result passed or not), timeout (killed
    at the deadline), error (could not start, or its output could not be read; see
    ``reason``). ``recorded`` is the transaction type written, ``evidence`` its body and
    ``tx_id`` its id. ``output_tail`` is the end of the combined output, for display.
    """

    job: str
    run: str
    status: JobStatus
    exit_code: int | None
    duration_ms: int
    output_digest: str
    output_bytes: int
    recorded: str
    evidence: dict[str, Any]
    tx_id: str
    reason: str | None = None
    output_tail: bytes = field(default=b"", repr=False)


class JobExecutor(Protocol):
    def run(self, request: JobRequest) -> JobResult:
        """Run one job to its end and record its result; raises only when the ledger
        refused or could not take the record (an ``OpsledgerError``)."""


class _Tail:
    """The last ``limit`` bytes of a stream, without copying the whole buffer per chunk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = False
        self._chunks: collections.deque[bytes] = collections.deque()

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)
        while self._chunks and self.size - len(self._chunks[0]) >= self.limit:
            self.size -= len(self._chunks.popleft())
            self.dropped = True

    def value(self) -> bytes:
        data = b"".join(self._chunks)
        if len(data) > self.limit:
            self.dropped = True
            return data[-self.limit :]
        return data


class _Capture:
    """Everything a run printed: hashed in full, kept as bounded tails."""

    def __init__(self, keep: int) -> None:
        self.hasher = hashlib.sha256()
        self.total = 0
        self.stdout = _Tail(keep)
        self.stderr = _Tail(keep)
        self.combined = _Tail(keep)

    def feed(self, stream: _Tail, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.total += len(chunk)
        stream.add(chunk)
        self.combined.add(chunk)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class _Outcome:
    exit_code: int | None
    timed_out: bool
    error: str | None
    duration_ms: int


class LocalExecutor:
    """Runs jobs as local processes and records their results through a ``LedgerClient``.

    ``workdir`` is where relative ``cwd`` values are resolved (and the default cwd);
    ``clock`` stamps ``started`` in the evidence (durations use the monotonic clock);
    ``keep_bytes`` bounds what is kept per stream for parsing; ``kill_grace`` is how long
    a timed-out group gets between SIGTERM and SIGKILL; ``base_env`` replaces this
    process's environment as the starting point (secrets are removed from either).
    """

    def __init__(
        self,
        client: LedgerClient,
        signer: Signer,
        *,
        workdir: Path,
        clock: Clock | None = None,
        keep_bytes: int = 1 << 20,
        kill_grace: float = 2.0,
        base_env: Mapping[str, str] | None = None,
        logger: Any = None,
    ) -> None:
        if keep_bytes <= 0:
            raise ConfigError("keep_bytes must be positive", key="keep_bytes")
        self.client = client
        self.signer = signer
        self.workdir = Path(workdir)
        self.clock = clock or SystemClock()
        self.keep_bytes = keep_bytes
        self.kill_grace = kill_grace
        self.base_env = base_env
        self.log = logger if logger is not None else structlog.get_logger("opsledger.pipeline")

    # -- the protocol --
    def run(self, request: JobRequest) -> JobResult:
        spec = request.spec
        started = format_ts(self.clock.now())
        self.log.info("job.started", job=spec.name, run=request.run, digest=request.digest)
        capture = _Capture(self.keep_bytes)
        outcome = self._execute(spec, capture)
        status, parsed, reason = self._judge(spec, outcome, capture)
        record_type, body = self._evidence(
            request, started=started, outcome=outcome, capture=capture, status=status, parsed=parsed
        )
        if reason:
            body["reason"] = reason[:4096]
        tx_id = self._record(record_type, request, body)
        self.log.info(
            "job.finished",
            job=spec.name,
            run=request.run,
            status=status,
            exit_code=outcome.exit_code,
            duration_ms=outcome.duration_ms,
            recorded=record_type,
            tx_id=tx_id,
            reason=reason,
        )
        return JobResult(
            job=spec.name,
            run=request.run,
            status=status,
            exit_code=outcome.exit_code,
            duration_ms=outcome.duration_ms,
            output_digest=capture.digest,
            output_bytes=capture.total,
            recorded=record_type,
            evidence=body,
            tx_id=tx_id,
            reason=reason,
            output_tail=capture.combined.value(),
        )

    # -- running --
    def _environment(self, spec: JobSpec) -> dict[str, str]:
        base = dict(os.environ if self.base_env is None else self.base_env)
        for name in _SECRET_ENV:
            base.pop(name, None)
        base.update(spec.env)
        return base

    def _argv(self, spec: JobSpec) -> list[str]:
        return ["/bin/sh", "-c", spec.command[0]] if spec.shell else list(spec.command)

    def _execute(self, spec: JobSpec, capture: _Capture) -> _Outcome:
        cwd = self.workdir / spec.cwd if spec.cwd else self.workdir
        begin = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._argv(spec),
                cwd=cwd,
                env=self._environment(spec),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            return _Outcome(
                exit_code=None,
                timed_out=False,
                error=f"could not start {spec.command[0]!r}: {exc.strerror or exc}",
                duration_ms=_ms_since(begin),
            )
        try:
            timed_out = self._supervise(proc, spec.timeout, begin, capture)
        finally:
            # Reached on success and on any exception (even KeyboardInterrupt): nothing of
            # the job's group may survive its run.
            _kill_group(proc.pid, signal.SIGKILL)
            code = proc.wait()
        return _Outcome(
            exit_code=code, timed_out=timed_out, error=None, duration_ms=_ms_since(begin)
        )

    def _supervise(
        self, proc: subprocess.Popen[bytes], timeout: float, begin: float, capture: _Capture
    ) -> bool:
        """Pump output until the process exits or the deadline passes; then end the group
        and drain what is left. Returns whether the deadline was hit."""
        assert proc.stdout is not None  # PIPE was asked for
        assert proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, capture.stdout)
            sel.register(proc.stderr, selectors.EVENT_READ, capture.stderr)
            deadline = begin + timeout
            timed_out = not self._pump(sel, capture, proc.pid, deadline)
            if timed_out:
                _kill_group(proc.pid, signal.SIGTERM)
                if not self._pump(sel, capture, proc.pid, time.monotonic() + self.kill_grace):
                    _kill_group(proc.pid, signal.SIGKILL)
                    self._pump(sel, capture, proc.pid, time.monotonic() + 5.0)
            # The leader has exited (it is a zombie until reaped, so its group id cannot be
            # reused yet): end whatever it left behind, then collect the last output. A
            # process that escaped into its own session may hold a pipe open; stop waiting
            # for it after a short drain.
            _kill_group(proc.pid, signal.SIGKILL)
            drain_until = time.monotonic() + 2.0
            while sel.get_map() and time.monotonic() < drain_until:
                self._read_ready(sel, capture, min(0.05, drain_until - time.monotonic()))
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
        return timed_out

    def _pump(
        self, sel: selectors.BaseSelector, capture: _Capture, pid: int, deadline: float
    ) -> bool:
        """Read output until ``pid`` exits (True) or ``deadline`` passes (False)."""
        while True:
            if _has_exited(pid):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait = min(0.05, remaining)
            if sel.get_map():
                self._read_ready(sel, capture, wait)
            else:
                time.sleep(wait)

    @staticmethod
    def _read_ready(sel: selectors.BaseSelector, capture: _Capture, wait: float) -> None:
        for key, _ in sel.select(timeout=max(wait, 0)):
            stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
            chunk = os.read(stream.fileno(), 65536)
            if chunk:
                capture.feed(key.data, chunk)
            else:
                sel.unregister(stream)
                stream.close()

    # -- judging and recording --
    def _judge(
        self, spec: JobSpec, outcome: _Outcome, capture: _Capture
    ) -> tuple[JobStatus, Parsed | None, str | None]:
        if outcome.error is not None:
            return "error", None, outcome.error
        if outcome.timed_out:
            return "timeout", None, f"timed out after {spec.timeout:g} s; process group killed"
        assert outcome.exit_code is not None  # a process ran to its end
        output = JobOutput(
            exit_code=outcome.exit_code,
            stdout=capture.stdout.value(),
            stderr=capture.stderr.value(),
            stdout_truncated=capture.stdout.dropped,
            stderr_truncated=capture.stderr.dropped,
        )
        try:
            parsed = PARSERS[spec.parser](output)
        except InvalidInput as exc:
            return "error", None, exc.message
        except Exception as exc:  # a parser bug must not lose the run's record
            return "error", None, f"parser {spec.parser} failed: {type(exc).__name__}: {exc}"
        return ("success" if parsed.ok else "failure"), parsed, None

    def _evidence(
        self,
        request: JobRequest,
        *,
        started: str,
        outcome: _Outcome,
        capture: _Capture,
        status: JobStatus,
        parsed: Parsed | None,
    ) -> tuple[str, dict[str, Any]]:
        spec = request.spec
        common: dict[str, Any] = {
            "job": spec.name,
            "run": request.run,
            "exit_code": -1 if outcome.exit_code is None else outcome.exit_code,
            "output_digest": capture.digest,
            "duration_ms": outcome.duration_ms,
            "command": list(spec.command),
            "started": started,
        }
        if spec.shell:
            common["shell"] = True
        pass_fail = "success" if status == "success" else "failure"
        if parsed is not None and spec.records == "scan.finished" and parsed.findings is not None:
            return "scan.finished", {
                **parsed.details,
                **common,
                "digest": request.digest,
                "scanner": spec.parser,
                "findings": dict(parsed.findings),
                "status": pass_fail,
            }
        if parsed is not None and spec.records == "test.finished":
            return "test.finished", {
                **parsed.details,
                **common,
                "digest": request.digest,
                "suite": spec.name,
                "passed": parsed.passed or 0,
                "failed": parsed.failed or 0,
                "status": pass_fail,
            }
        return "job.finished", {
            **(parsed.details if parsed is not None else {}),
            **common,
            "digest": request.digest,
            "status": pass_fail,
            "outcome": status,
        }

    def _record(self, tx_type: str, request: JobRequest, body: dict[str, Any]) -> str:
        subject = Subject("artifact", request.digest)
        refs = [request.trigger]
        try:
            receipt = self.client.submit(self.signer.sign(tx_type, subject, body, refs))
        except ReplayRejected:
            # Another process signed for this actor with a later nonce: move past the
            # ledger's last one and re-sign, once (see Signer).
            self.signer.bump_past(int(self.client.actor(self.signer.actor)["last_nonce"]))
            receipt = self.client.submit(self.signer.sign(tx_type, subject, body, refs))
        return receipt.tx_id


def _ms_since(begin: float) -> int:
    return max(0, int((time.monotonic() - begin) * 1000))


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (WNOWAIT keeps the zombie, and with it
    the process group id, until ``Popen.wait``)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
