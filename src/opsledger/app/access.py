"""Recorded production access: ``opsledger exec`` opens a session on the ledger, runs one
command, and closes the session with what the command did.

Invariants, in the order a session goes through them:

1. **A refusal records nothing and runs nothing.** The environment's policy (a role, an
   approved change) is checked before anything is signed; a refusal is one error.
2. **Nothing runs before ``access.opened`` is durable.** The command starts only after the
   node acknowledged the opening transaction, so the ledger never lacks a session that ran.
3. **An opened session is always closed.** Whatever ends the command (its own exit, a
   signal, a failure to start, an error of ours), ``access.closed`` is recorded with the
   opening's tx id as ``session`` and as its one ref. SIGINT, SIGTERM and SIGHUP are caught
   from before the opening until the close is recorded; while the command runs they are
   forwarded to its process group, so the command decides how to end, not us.
4. **The output digest is what the operator saw.** The command's stdout and stderr are pipes
   that we copy to our own stdout and stderr chunk by chunk, hashing each chunk in the order
   it arrived, which is the order it was written to our streams.

The ledger is reached through ``connect`` (a context manager yielding a ``LedgerClient``),
opened once to open the session and once to close it: in embedded mode the client holds
the home's writer lock, and keeping it for a session that may last hours would stop every
other writer (including ``opsledger`` run by the command itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from opsledger.app.config import load_section
from opsledger.client.base import LedgerClient, Signer, submit_signed
from opsledger.core import (
    Clock,
    ConfigError,
    InvalidInput,
    OpsledgerError,
    PermissionDenied,
    Receipt,
    StorageError,
    Subject,
)

__all__ = [
    "EXIT_CANNOT_START",
    "RELEASE_GATE",
    "SESSION_ENV",
    "AccessPolicy",
    "AccessRequest",
    "AccessResult",
    "Approval",
    "ByteSink",
    "Connect",
    "EnvironmentPolicy",
    "Outcome",
    "SignalForwarder",
    "Streams",
    "check_access",
    "load_policy",
    "parse_policy",
    "run_access",
    "run_command",
]

RELEASE_GATE = "release-gate"
EXIT_CANNOT_START = 127
SESSION_ENV = "OPSLEDGER_ACCESS_SESSION"
"""Set in the command's environment to the session's tx id, so tools it runs can cite it."""

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HIDDEN_ENV = ("OPSLEDGER_KEY",)  # a signing key never reaches the production command
_DIGEST = re.compile(r"^(?:artifact:)?(sha256:[0-9a-f]{64})$")
_ENVIRONMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ARG_MAX = 4096  # the access.opened schema's limit per command argument
_CHUNK = 65536
_POLL_S = 0.05  # how often the copy loop checks whether the command has exited
_DRAIN_IDLE_S = 0.1  # after the exit: stop when the pipes are quiet this long...
_DRAIN_MAX_S = 1.0  # ...or after this, if a background child keeps them open

Connect = Callable[[], AbstractContextManager[LedgerClient]]
"""Opens a client for one step and closes it afterwards (``State.writer`` in the CLI)."""


class ByteSink(Protocol):
    """Where the command's output is copied: a binary stream such as ``sys.stdout.buffer``."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


# -- policy ------------------------------------------------------------------------------

_SECTION_KEYS = {"environments", "ticket_pattern"}
_ENVIRONMENT_KEYS = {"role", "require_change", "ticket_pattern"}


@dataclass(frozen=True, slots=True)
class EnvironmentPolicy:
    """What access to one environment needs. ``roles``: any one of them (admin always may)."""

    roles: tuple[str, ...] = ()
    require_change: bool = False
    ticket_pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The ``access`` section. Environments it does not list have no requirements."""

    environments: Mapping[str, EnvironmentPolicy] = field(default_factory=dict)

    def for_environment(self, name: str) -> EnvironmentPolicy:
        return self.environments.get(name, EnvironmentPolicy())


def _mapping(value: Any, key: str, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a mapping", key=key)
    return value


def _refuse_unknown(section: Mapping[str, Any], allowed: set[str], key: str, where: str) -> None:
    unknown = sorted(str(k) for k in section if str(k) not in allowed)
    if unknown:
        name = f"{key}.{unknown[0]}"
        raise ConfigError(f"{where}: unknown key {name}", key=name)


def _pattern(value: Any, key: str, where: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a regular expression string", key=key)
    try:
        return re.compile(value)
    except re.error as exc:
        raise ConfigError(
            f"{where}: {key} is not a valid regular expression: {exc}", key=key
        ) from exc


def _roles(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(r, str) and r for r in items):
        raise ConfigError(f"{where}: {key} must be a role name or a list of them", key=key)
    return tuple(items)


def parse_policy(section: Mapping[str, Any], *, where: str = "opsledger.yaml") -> AccessPolicy:
    """Validate the raw ``access`` section; errors name the key (``access.environments.prod.x``)
    because a typo in a security policy must fail loudly, never fall back to "no rule"."""
    _refuse_unknown(section, _SECTION_KEYS, "access", where)
    default_pattern = _pattern(section.get("ticket_pattern"), "access.ticket_pattern", where)
    environments: dict[str, EnvironmentPolicy] = {}
    raw_envs = _mapping(section.get("environments"), "access.environments", where)
    for raw_name, raw_env in raw_envs.items():
        name = str(raw_name)
        key = f"access.environments.{name}"
        env = _mapping(raw_env, key, where)
        _refuse_unknown(env, _ENVIRONMENT_KEYS, key, where)
        require_change = env.get("require_change", False)
        if not isinstance(require_change, bool):
            raise ConfigError(
                f"{where}: {key}.require_change must be true or false", key=f"{key}.require_change"
            )
        pattern = _pattern(env.get("ticket_pattern"), f"{key}.ticket_pattern", where)
        environments[name] = EnvironmentPolicy(
            roles=_roles(env.get("role"), f"{key}.role", where),
            require_change=require_change,
            ticket_pattern=pattern or default_pattern,
        )
    return AccessPolicy(environments)


def load_policy(config_path: Path) -> AccessPolicy:
    """The policy from ``opsledger.yaml`` (no section: no requirements anywhere)."""
    return parse_policy(load_section(config_path, "access"), where=str(config_path))


# -- the approval check ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approval:
    """Why access was allowed. ``kind`` is ``ticket`` or ``release-gate`` when a change was
    checked, else None; ``evidence`` holds the tx ids it rests on (the verdict)."""

    kind: str | None = None
    evidence: tuple[str, ...] = ()


def _release_gate_verdict(client: LedgerClient, digest: str) -> dict[str, Any] | None:
    """The newest ``release-gate`` verdict about ``artifact:<digest>``, if any."""
    views = client.list_transactions(
        {"type": "contract.verdict", "subject": "artifact:" + digest, "order": "desc", "limit": 50}
    )
    for view in views:
        if view["transaction"]["body"].get("contract") == RELEASE_GATE:
            return view
    return None


def check_access(
    client: LedgerClient,
    policy: AccessPolicy,
    *,
    environment: str,
    actor: str,
    change: str | None,
) -> Approval:
    """Allow ``actor`` into ``environment`` or raise ``PermissionDenied`` saying what is
    missing. A change is approved by a ticket reference matching the environment's pattern
    or by an artifact digest whose newest release-gate verdict passed."""
    rules = policy.for_environment(environment)
    if rules.roles:
        roles = set(client.actor(actor)["roles"])
        if "admin" not in roles and not roles & set(rules.roles):
            wanted = " or ".join(rules.roles)
            raise PermissionDenied(
                f"access to {environment} needs the {wanted} role; {actor} has "
                f"{', '.join(sorted(roles)) or 'no roles'}",
                field="actor",
            )
    if not rules.require_change:
        return Approval()
    accepted = "an artifact digest with a passing release-gate verdict"
    if rules.ticket_pattern is not None:
        accepted = f"a ticket matching {rules.ticket_pattern.pattern} or {accepted}"
    if not change:
        raise PermissionDenied(
            f"access to {environment} needs --change naming an approved change: {accepted}",
            field="change",
        )
    digest = _DIGEST.match(change)
    if digest is not None:
        verdict = _release_gate_verdict(client, digest.group(1))
        if verdict is None:
            raise PermissionDenied(
                f"change {change} has no release-gate verdict on the ledger", field="change"
            )
        result = verdict["transaction"]["body"].get("result")
        if result != "pass":
            raise PermissionDenied(
                f"change {change}: the newest release-gate verdict ({verdict['tx_id'][:12]}) "
                f"is {result}, not pass",
                field="change",
            )
        return Approval("release-gate", (str(verdict["tx_id"]),))
    if rules.ticket_pattern is not None and rules.ticket_pattern.fullmatch(change):
        return Approval("ticket")
    raise PermissionDenied(
        f"change {change!r} is not approved for {environment}: give {accepted}", field="change"
    )


# -- running the command -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Streams:
    """The command's input (``None``: ours, inherited; or an fd / file / ``DEVNULL``) and
    where its output is copied."""

    stdin: int | IO[Any] | None
    stdout: ByteSink
    stderr: ByteSink


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the command ended. ``exit_code`` follows the shell: 128+N for signal N, 127 when
    it could not start. ``error`` says why it did not start or did not finish normally."""

    exit_code: int
    duration_ms: int
    output_digest: str
    output_bytes: int = 0
    signal: str | None = None
    error: str | None = None


class SignalForwarder:
    """Catches SIGINT, SIGTERM and SIGHUP for the life of a session.

    Signals that arrive before the command starts are kept (the caller then does not start
    it); while it runs they go to its process group; after it ended they are only noted, so
    that nothing kills us between the command's end and the recorded close. Handlers can be
    installed only in the main thread; elsewhere this does nothing.
    """

    def __init__(self, signals: Sequence[signal.Signals] = FORWARDED_SIGNALS) -> None:
        self._signals = tuple(signals)
        self._previous: dict[signal.Signals, Any] = {}
        self._pgid: int | None = None
        self.received: list[int] = []

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._pgid is not None:
            self._send(signum)

    def _send(self, signum: int) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signum)

    def attach(self, pgid: int) -> None:
        """Forward to ``pgid`` from now on, and what arrived while it was being started."""
        pending = list(self.received)
        self._pgid = pgid
        for signum in pending:
            self._send(signum)

    def detach(self) -> None:
        self._pgid = None


class _Terminal:
    """Hands our controlling terminal to the command's process group and takes it back.

    The command runs in its own process group so that signals can be forwarded to all of
    it; a background group that reads the terminal is stopped by SIGTTIN, so an interactive
    command (a prompt, a shell) must be made the foreground group, as a shell does for a
    job. It is woken with SIGCONT in case it tried to read before the handover.
    """

    def __init__(self, stdin: int | IO[Any] | None) -> None:
        self.fd = self._foreground_fd(stdin)
        self._ttou: Any = None

    @staticmethod
    def _foreground_fd(stdin: int | IO[Any] | None) -> int | None:
        if threading.current_thread() is not threading.main_thread():
            return None  # SIGTTOU cannot be ignored from here, so we could not take it back
        try:
            fd = 0 if stdin is None else stdin if isinstance(stdin, int) else stdin.fileno()
            if fd >= 0 and os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except (OSError, ValueError):
            pass
        return None

    def give(self, pgid: int) -> None:
        if self.fd is None:
            return
        # Ignored for the whole session: we write to the terminal while in the background
        # (a TOSTOP terminal would stop us) and must take the terminal back at the end.
        self._ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.tcsetpgrp(self.fd, pgid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGCONT)

    def take_back(self) -> None:
        if self.fd is None or self._ttou is None:
            return
        with contextlib.suppress(OSError):
            os.tcsetpgrp(self.fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, self._ttou)
        self._ttou = None


class _Sink:
    """One of our output streams; a failed write (a closed terminal, a broken pipe) stops
    copying to it but not hashing, so the command keeps running and the digest stays whole."""

    def __init__(self, stream: ByteSink) -> None:
        self.stream: ByteSink | None = stream

    def write(self, chunk: bytes) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(chunk)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None


def _elapsed_ms(clock: Clock, start: Any) -> int:
    return max(0, int((clock.now() - start).total_seconds() * 1000))


def _copy_output(proc: subprocess.Popen[bytes], sinks: Mapping[int, _Sink], digest: Any) -> int:
    """Copy both pipes to their sinks until they close, hashing chunks in arrival order;
    returns the byte count. Once the command has exited, a background process of its that
    still holds a pipe gets at most ``_DRAIN_MAX_S`` more."""
    total = 0
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            events = selector.select(_POLL_S if exited_at is None else _DRAIN_IDLE_S)
            for key, _ in events:
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                digest.update(chunk)
                total += len(chunk)
                sinks[key.fd].write(chunk)
            if exited_at is None:
                if proc.poll() is not None:
                    exited_at = time.monotonic()
            elif not events or time.monotonic() - exited_at > _DRAIN_MAX_S:
                break
    return total


def run_command(
    command: Sequence[str],
    *,
    streams: Streams,
    clock: Clock,
    env: Mapping[str, str] | None = None,
    forwarder: SignalForwarder | None = None,
) -> Outcome:
    """Run ``command`` in its own process group, copying and hashing its output; never
    raises for the command's sake (a command that cannot start is exit 127)."""
    own = forwarder is None
    active = forwarder or SignalForwarder()
    digest = hashlib.sha256()
    start = clock.now()
    with active if own else contextlib.nullcontext(active):
        try:
            proc = subprocess.Popen(
                list(command),
                stdin=streams.stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else None,
                process_group=0,
                bufsize=0,
            )
        except OSError as exc:
            return Outcome(
                exit_code=EXIT_CANNOT_START,
                duration_ms=_elapsed_ms(clock, start),
                output_digest="sha256:" + digest.hexdigest(),
                error=f"cannot start {command[0]!r}: {exc.strerror or exc}",
            )
        terminal = _Terminal(streams.stdin)
        active.attach(proc.pid)
        terminal.give(proc.pid)
        try:
            pairs = ((proc.stdout, streams.stdout), (proc.stderr, streams.stderr))
            sinks = {pipe.fileno(): _Sink(sink) for pipe, sink in pairs if pipe is not None}
            total = _copy_output(proc, sinks, digest)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # only on an error of ours: do not leave it running
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            active.detach()
            terminal.take_back()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    duration = _elapsed_ms(clock, start)
    if returncode < 0:
        return Outcome(
            exit_code=128 - returncode,
            duration_ms=duration,
            output_digest="sha256:" + digest.hexdigest(),
            output_bytes=total,
            signal=signal.Signals(-returncode).name,
        )
    return Outcome(returncode, duration, "sha256:" + digest.hexdigest(), total)


# -- the session -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """Who asks is the signer's actor; this is where, why, what and under which change."""

    environment: str
    reason: str
    command: tuple[str, ...]
    change: str | None = None
    host: str = field(default_factory=socket.gethostname)

    def validate(self) -> None:
        """Refuse what the ledger could not record, before anything is checked or signed."""
        if not _ENVIRONMENT.match(self.environment):
            raise InvalidInput(
                f"--env {self.environment!r} must be 1-64 of A-Z a-z 0-9 . _ -", field="env"
            )
        if not self.reason.strip():
            raise InvalidInput("--reason must say why access is needed", field="reason")
        if not self.command:
            raise InvalidInput("give the command to run after --", field="command")
        for index, arg in enumerate(self.command):
            if not arg or len(arg) > _ARG_MAX:
                raise InvalidInput(
                    f"command argument {index} is empty or longer than {_ARG_MAX} characters:"
                    " access.opened cannot record it",
                    field="command",
                )
        if self.change is not None and not self.change.strip():
            raise InvalidInput("--change must not be empty", field="change")

    def opened_body(self, approval: Approval) -> dict[str, Any]:
        body: dict[str, Any] = {
            "environment": self.environment,
            "reason": self.reason,
            "command": list(self.command),
            "host": self.host,
        }
        if self.change is not None:
            body["change"] = self.change
        if approval.kind is not None:
            body["change_approval"] = approval.kind
        return body


@dataclass(frozen=True, slots=True)
class AccessResult:
    opened: Receipt
    closed: Receipt
    outcome: Outcome
    approval: Approval


def _closed_body(session: str, outcome: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "session": session,
        "exit_code": outcome.exit_code,
        "duration_ms": outcome.duration_ms,
        "output_digest": outcome.output_digest,
        "output_bytes": outcome.output_bytes,
    }
    if outcome.signal is not None:
        body["signal"] = outcome.signal
    if outcome.error is not None:
        body["error"] = outcome.error
    return body


def _record_close(
    connect: Connect,
    signer: Signer,
    subject: Subject,
    session: str,
    outcome: Outcome,
    *,
    retry_s: float,
    sleep: Callable[[float], None],
) -> Receipt:
    """Record ``access.closed``. A ``ConfigError`` while connecting is the writer lock held
    by another process (the session's own command may have been writing): wait for it."""
    body = _closed_body(session, outcome)
    deadline = time.monotonic() + retry_s
    delay = 0.05
    while True:
        try:
            with connect() as client:
                return submit_signed(
                    client, signer, signer.sign("access.closed", subject, body, (session,))
                )
        except ConfigError as exc:
            if time.monotonic() < deadline:
                sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            failure: OpsledgerError = exc
        except OpsledgerError as exc:
            failure = exc
        raise StorageError(
            f"the command ended (exit {outcome.exit_code}) but closing session {session} "
            f"was not recorded: {failure.message}",
            session=session,
            exit_code=outcome.exit_code,
        ) from failure


def _child_env(base: Mapping[str, str], session: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _HIDDEN_ENV}
    env[SESSION_ENV] = session
    return env


def run_access(
    request: AccessRequest,
    *,
    connect: Connect,
    signer: Signer,
    policy: AccessPolicy,
    streams: Streams,
    clock: Clock,
    env: Mapping[str, str] | None = None,
    on_opened: Callable[[Receipt], None] | None = None,
    close_retry_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> AccessResult:
    """Check, open, run, close (see the module docstring for the guarantees).

    Refusals raise before anything is recorded. Once the session is open, errors of ours
    still close it (exit code 1, with the error's type) before they travel.
    """
    request.validate()
    subject = Subject("environment", request.environment)
    with SignalForwarder() as forwarder:
        with connect() as client:
            approval = check_access(
                client,
                policy,
                environment=request.environment,
                actor=signer.actor,
                change=request.change,
            )
            stx = signer.sign(
                "access.opened", subject, request.opened_body(approval), approval.evidence
            )
            opened = submit_signed(client, signer, stx)
        started = clock.now()
        try:
            if on_opened is not None:
                on_opened(opened)
            if forwarder.received:  # asked to stop before the command started: do not start
                signum = forwarder.received[0]
                outcome = Outcome(
                    exit_code=128 + signum,
                    duration_ms=_elapsed_ms(clock, started),
                    output_digest="sha256:" + hashlib.sha256().hexdigest(),
                    signal=signal.Signals(signum).name,
                    error="interrupted before the command started",
                )
            else:
                outcome = run_command(
                    request.command,
                    streams=streams,
                    clock=clock,
                    env=_child_env(os.environ if env is None else env, opened.tx_id),
                    forwarder=forwarder,
                )
        except BaseException as exc:
            failed = Outcome(
                exit_code=1,
                duration_ms=_elapsed_ms(clock, started),
                output_digest="sha256:" + hashlib.sha256().hexdigest(),
                error=f"opsledger failed: {type(exc).__name__}",
            )
            _record_close(
                connect, signer, subject, opened.tx_id, failed, retry_s=close_retry_s, sleep=sleep
            )
            raise
        closed = _record_close(
            connect, signer, subject, opened.tx_id, outcome, retry_s=close_retry_s, sleep=sleep
        )
    return AccessResult(opened, closed, outcome, approval)
