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

Command modules load lazily: importing every one of them (and through them NATS, web3,
uvicorn, strawberry...) cost 1.5-8 s per invocation before any work. The root group
knows each command's name, module and one-line help (``COMMANDS``) and imports a module
only when one of its commands runs; the root ``--help`` is drawn from that table, which
``tests/cli/test_startup.py`` checks against the real modules. Every command's options
get ``_coerce``'s conversion, which imports pydantic (typer's way, ~70 ms) only for a
value that needs it: never for the ``str``, ``Path`` and flag options most commands use.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from opsledger.cli import _coerce
from opsledger.cli._state import Consoles, State
from opsledger.core import (
    ConfigError,
    Conflict,
    InvalidInput,
    OpsledgerError,
    VerificationFailed,
)

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_USAGE", "app", "exit_code_for", "main"]

EXIT_FAILED = 1
EXIT_USAGE = 2

# name -> (module under opsledger.cli, first paragraph of the command's help), in the
# order the root ``--help`` lists them: plain commands first, then groups, as Typer
# orders an eagerly built root. tests/cli/test_startup.py fails when this drifts from
# the modules (and prints the table to paste).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": (
        "init",
        "Create a new ledger: admin and node keys, the store, the genesis block and the\n"
        "built-in contracts.",
    ),
    "record": (
        "record",
        "Sign a transaction and append it; prints its id, block height and leaf index.",
    ),
    "log": ("query", "List transactions, oldest first, with filters."),
    "show": ("query", "Show one transaction with its position in the log."),
    "block": ("query", "Show one block: its header, transaction ids and checkpoint."),
    "checkpoint": (
        "query",
        "Print the signed checkpoint note (C2SP tlog-checkpoint), byte for byte.",
    ),
    "head": ("query", "Show the latest block: height, log size and root, and the ledger id."),
    "proof": (
        "proof",
        "Print an inclusion proof for TXID, or a consistency proof between two tree sizes.",
    ),
    "verify": (
        "verify",
        "Re-check the whole ledger from genesis, from the home or from a bundle file.",
    ),
    "export": ("bundle", "Write the ledger to a bundle file that anyone can verify offline."),
    "import": (
        "bundle",
        "Verify a bundle completely, then create a new home holding its ledger.",
    ),
    "fork": ("bundle", "Create a test copy of this ledger, verified, up to block height --at."),
    "serve": (
        "serve",
        "Serve the ledger's HTTP API; while it runs, other commands go through it.",
    ),
    "worker": (
        "worker",
        "Run jobs from the queue until stopped (Ctrl-C / SIGTERM: finish running jobs).",
    ),
    "dora": (
        "dora",
        "DORA metrics from explicit links on the ledger, with the totals behind each ratio.",
    ),
    "exec": (
        "exec",
        "Run CMD as recorded access to an environment; exits with CMD's status.",
    ),
    "keys": ("keys", "Manage actors and their keys (each change is a transaction)."),
    "audit": (
        "audit",
        "Audit reports: what happened in a period, with proofs to check offline.",
    ),
    "contract": (
        "contract",
        "Contracts: deterministic rules every node re-executes (release gates, SLAs).",
    ),
    "sla": ("sla", "Service-level agreements: reports from the ledger."),
    "slo": ("slo", "Service-level objectives: uptime and error budgets from the ledger."),
    "pipeline": ("pipeline", "Pipelines as code: run them, follow them, prove them."),
    "deploy": (
        "deploy",
        "Deploy VERSION of a service; a failed health gate rolls back on its own. Records\n"
        "deploy.started / deploy.finished (and deploy.rolled_back) on the ledger.",
    ),
    "gateway": (
        "gateway",
        "JSON-RPC gateway: health-checked routing, failover, caching, rate limits.",
    ),
    "index": ("index", "Chain event indexer: backfill, follow the head, roll back reorgs."),
    "monitor": (
        "monitor",
        "Probe nodes and endpoints, alert, open incidents, serve the status page.",
    ),
    "incident": ("incident", "Incidents and postmortems, on the ledger."),
}

# The modules in the order the eager root registered them (kept for tools and tests
# that build the whole tree).
MODULES: tuple[str, ...] = (
    "init",
    "keys",
    "record",
    "query",
    "proof",
    "verify",
    "bundle",
    "serve",
    "audit",
    "contract",
    "sla",
    "slo",
    "pipeline",
    "worker",
    "deploy",
    "dora",
    "gateway",
    "index",
    "monitor",
    "incident",
    "exec",
)


def load_module_commands(module: str) -> dict[str, Any]:
    """Import ``opsledger.cli.<module>`` and build the click commands its ``register``
    adds, through a throwaway Typer so Typer converts them exactly as for the root."""
    registry = typer.Typer()
    importlib.import_module(f"opsledger.cli.{module}").register(registry)
    group = typer.main.get_group(registry)
    for command in group.commands.values():
        _coerce.install(command)  # pydantic only when a value needs it (see _coerce)
    return dict(group.commands)


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
    """The root group: loads command modules on demand, runs the command and renders our
    errors."""

    # False draws the root ``--help`` from the real commands (tests compare both).
    help_from_table = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._registered: dict[str, Any] = {}
        self._loaded: dict[str, dict[str, Any]] = {}
        self._in_help = False
        super().__init__(*args, **kwargs)
        _coerce.install(self, subcommands=False)  # the root's own options, likewise

    @property
    def commands(self) -> MutableMapping[str, Any]:
        """Every command, importing every module: for tools that walk the whole tree
        (``scripts/gen_cli_doc.py``) and typo suggestions, never on the normal path."""
        found = dict(self._registered)
        for name in COMMANDS:
            command = self._load(name)
            if command is not None:
                found[name] = command
        return found

    @commands.setter
    def commands(self, value: MutableMapping[str, Any]) -> None:
        self._registered = dict(value)

    def add_command(self, cmd: Any, name: str | None = None) -> None:
        name = name or cmd.name
        assert name is not None
        self._registered[name] = cmd

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self._registered if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self._registered:
            return self._registered[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        module, short_help = COMMANDS[cmd_name]
        if self._in_help and self.help_from_table and module not in self._loaded:
            # Listed in the root help only: name and first paragraph are all it shows.
            return TyperCommand(name=cmd_name, help=short_help)
        return self._load(cmd_name)

    def _load(self, cmd_name: str) -> Any:
        module = COMMANDS[cmd_name][0]
        if module not in self._loaded:
            self._loaded[module] = load_module_commands(module)
        return self._loaded[module].get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._in_help = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._in_help = False

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
    from opsledger.app.logs import configure_logging  # structlog: only once a command runs

    configure_logging(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = State(home_path=home, verbose=verbose, consoles=_consoles(ctx))


def main() -> None:
    """Console-script entry point (``opsledger``).

    Two cheap wins for a short-lived process, here and not at import so that a test
    runner invoking ``app`` in-process is unaffected: what was imported so far is moved
    out of the cyclic collector's reach (it is never garbage, so scanning it again is
    waste), and so is everything alive at exit, where the interpreter's final collections
    would otherwise scan the whole heap for memory the OS reclaims anyway (measured on
    ``opsledger index --once``: 50-100 ms of every run).
    """
    gc.freeze()
    atexit.register(gc.freeze)
    app(prog_name="opsledger")
