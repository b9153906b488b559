"""``opsledger exec``: run one command in an environment as recorded access.

Thin by design: the policy check, the session and the command's supervision live in
``opsledger.app.access``. Our stdout carries only the command's stdout, byte for byte (so
``opsledger exec ... -- pg_dump > dump.sql`` and scp through the SSH gate work); our own
lines, human or ``--json``, go to stderr. The exit status is the command's.
"""

from __future__ import annotations

import codecs
import subprocess
import sys
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from opsledger.app.access import (
    AccessRequest,
    ByteSink,
    Outcome,
    Streams,
    load_policy,
    run_access,
)
from opsledger.cli._render import print_json, say, short
from opsledger.cli._state import State, get_state
from opsledger.core import Receipt, SystemClock

__all__ = ["register"]


class _TextSink:
    """Bytes into a text-only stream (a console given a ``StringIO``), decoded as UTF-8 so a
    character split across two chunks is not mangled."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, /) -> int:
        self._stream.write(self._decoder.decode(data))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


def _sink(console: Console) -> ByteSink:
    """The binary stream under a console's file (``sys.stdout.buffer`` normally)."""
    stream: Any = console.file
    stream.flush()  # what Rich wrote so far comes before the command's bytes
    buffer = getattr(stream, "buffer", None)
    return buffer if buffer is not None else _TextSink(stream)


def _stdin() -> int | IO[Any]:
    """Our real stdin for the command, or nothing when it has no descriptor (a test runner
    replaced it): the command must never wait on input that cannot come."""
    try:
        sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL
    return sys.stdin


def _said(state: State, as_json: bool, event: dict[str, Any], text: str) -> None:
    if as_json:
        print_json(state.err, event)
    else:
        say(state.err, text, style="dim")


def _report_close(
    state: State, as_json: bool, session: str, closed: Receipt, outcome: Outcome
) -> None:
    if outcome.error and not as_json:
        state.err.print(Text("error: ", style="bold red") + Text(outcome.error), soft_wrap=True)
    event = {
        "event": "access.closed",
        **closed.to_dict(),
        "session": session,
        "exit_code": outcome.exit_code,
        "duration_ms": outcome.duration_ms,
        "output_digest": outcome.output_digest,
        "signal": outcome.signal,
        "error": outcome.error,
    }
    ended = f"signal {outcome.signal}" if outcome.signal else f"exit {outcome.exit_code}"
    _said(
        state,
        as_json,
        event,
        f"opsledger: session {short(session)} closed: {ended} after "
        f"{outcome.duration_ms / 1000:.1f} s (tx {short(closed.tx_id)})",
    )


def exec_command(
    ctx: typer.Context,
    *,
    command: Annotated[
        list[str], typer.Argument(metavar="CMD", help="The command and its arguments.")
    ],
    environment: Annotated[str, typer.Option("--env", help="The environment entered.")],
    reason: Annotated[str, typer.Option("--reason", help="Why access is needed.")],
    change: Annotated[
        str | None,
        typer.Option("--change", help="The change this is for: a ticket or an artifact digest."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--as", help="Who enters (default: the home's admin).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Report the session as JSON lines on stderr.")
    ] = False,
) -> None:
    """Run CMD as recorded access to an environment; exits with CMD's status.

    Records access.opened (who, where, why, the command) before CMD starts and
    access.closed (exit code, duration, sha256 of its output) after it ends, even when
    it is interrupted. An environment may require a role and an approved change
    (section `access` of opsledger.yaml). Refusals run and record nothing.

    Example: opsledger exec --env prod --reason "restart stuck indexer" --change CHG-1042
    --as alice -- systemctl restart indexer
    """
    state = get_state(ctx)
    home = state.home
    home.config()  # a missing home is reported as such, not as a missing key
    policy = load_policy(home.config_path)
    signer = home.signer(actor)
    request = AccessRequest(
        environment=environment, reason=reason, command=tuple(command), change=change
    )

    def opened(receipt: Receipt) -> None:
        _said(
            state,
            as_json,
            {
                "event": "access.opened",
                **receipt.to_dict(),
                "environment": environment,
                "actor": signer.actor,
            },
            f"opsledger: access to {environment} as {signer.actor} recorded: "
            f"session {short(receipt.tx_id)}",
        )

    result = run_access(
        request,
        connect=state.writer,
        signer=signer,
        policy=policy,
        streams=Streams(stdin=_stdin(), stdout=_sink(state.out), stderr=_sink(state.err)),
        clock=SystemClock(),
        on_opened=opened,
    )
    _report_close(state, as_json, result.opened.tx_id, result.closed, result.outcome)
    raise typer.Exit(result.outcome.exit_code)


def register(app: typer.Typer) -> None:
    # Options end at the first word of CMD, so `exec --env prod ls -la` needs no `--`.
    app.command("exec", context_settings={"allow_interspersed_args": False})(exec_command)
