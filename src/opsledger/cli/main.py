"""The ``opsledger`` root command: global options and the one place errors are rendered.

Every command raises our errors (``opsledger.core.errors``) and lets them travel; the
root group catches ``OpsledgerError`` exactly once, prints one line to stderr and exits:

* 2 for bad input of any kind (``InvalidInput`` and its children ``SchemaError``,
  ``UnknownType``, ``NotFound``, ``PermissionDenied``), ``Conflict`` (including
  ``ReplayRejected``) and ``ConfigError``, the same code click uses for usage errors:
  the caller must change the command;
* 1 for ``VerificationFailed`` (evidence does not hold) and for ``StorageError`` and
  ``UpstreamError`` (the command was fine; the world was not).

``--verbose`` adds the error's structured details and its cause chain. The handler sits
in the group's ``invoke`` rather than around ``app()`` so that a test runner invoking
the group sees the same output and exit codes as a user.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from opsledger.app.logs import configure_logging
from opsledger.cli import (
    audit,
    bundle,
    contract,
    deploy,
    dora,
    gateway,
    incident,
    index,
    init,
    keys,
    monitor,
    pipeline,
    proof,
    query,
    record,
    serve,
    sla,
    slo,
    verify,
    worker,
)
from opsledger.cli import exec as exec_command
from opsledger.cli._state import Consoles, State
from opsledger.core import (
    ConfigError,
    Conflict,
    InvalidInput,
    OpsledgerError,
    VerificationFailed,
)

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "app", "exit_code_for", "main"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def exit_code_for(exc: OpsledgerError) -> int:
    if isinstance(exc, InvalidInput | Conflict | ConfigError):
        return EXIT_USAGE
    return EXIT_FAILED


def error_line(exc: OpsledgerError) -> str:
    """The one line a user sees; verification failures say so and name the tx."""
    message = exc.message
    if isinstance(exc, VerificationFailed):
        tx_id = exc.details.get("tx_id")
        if tx_id and str(tx_id) not in message:
            message += f" (tx {tx_id})"
        message = f"verification failed: {message}"
    return message


class OpsledgerGroup(TyperGroup):
    """The root group: runs the command and renders our errors."""

    # ``ctx`` is Typer's vendored click Context, which Typer does not export by name.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OpsledgerError as exc:
            state = ctx.find_object(State)
            consoles = state.consoles if state else _consoles(ctx)
            err = consoles.err
            err.print(Text("error: ", style="bold red") + Text(error_line(exc)), soft_wrap=True)
            if state is not None and state.verbose:
                for key, value in exc.details.items():
                    err.print(Text(f"  {key}: {value}"), soft_wrap=True)
                cause = _cause_of(exc)
                while cause is not None:
                    err.print(Text(f"  caused by {type(cause).__name__}: {cause}"), soft_wrap=True)
                    cause = _cause_of(cause)
            raise typer.Exit(exit_code_for(exc)) from None


def _cause_of(exc: BaseException) -> BaseException | None:
    """The next exception in the chain, as Python's own traceback would show it."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def _consoles(ctx: typer.Context) -> Consoles:
    injected = ctx.find_object(Consoles)
    return injected if injected is not None else Consoles.default()


app = typer.Typer(
    name="opsledger",
    cls=OpsledgerGroup,
    no_args_is_help=True,
    add_completion=False,
    # Never print local variables in a traceback: they may hold key material.
    pretty_exceptions_show_locals=False,
    help="Secure delivery and operations evidence on a verifiable ledger.",
)


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path,
        typer.Option(
            "--home",
            envvar="OPSLEDGER_HOME",
            help="The ledger home directory (default: $OPSLEDGER_HOME, else ./.opsledger).",
            show_default=False,
        ),
    ] = Path(".opsledger"),
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Explain errors in more detail.")
    ] = False,
) -> None:
    """opsledger: every delivery and operations step as signed, verifiable evidence.

    Example: opsledger --home ./.opsledger init --admin alice
    """
    configure_logging(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = State(home_path=home, verbose=verbose, consoles=_consoles(ctx))


for _module in (init, keys, record, query, proof, verify, bundle, serve, audit, contract, sla, slo):
    _module.register(app)
for _service in (pipeline, worker, deploy, dora, gateway, index, monitor, incident):
    _service.register(app)
exec_command.register(app)


def main() -> None:
    """Console-script entry point (``opsledger``)."""
    app(prog_name="opsledger")
