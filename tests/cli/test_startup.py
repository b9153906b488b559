"""Start-up cost: the root command imports a command's module only when it runs.

Asserted by what gets imported (``sys.modules`` in a fresh interpreter), never by time:
every command used to pay for NATS, web3, uvicorn and strawberry before doing anything.
The root ``--help`` is drawn from ``COMMANDS``; these tests also hold that table to
the real modules, so it cannot drift silently.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.cli.main import (
    COMMANDS,
    MODULES,
    OpsledgerGroup,
    app,
    load_module_commands,
    root,
)

from .conftest import loaded_after

# Libraries only some commands need; none may load for help or a read-only query.
HEAVY = ("nats", "web3", "eth_abi", "strawberry", "uvicorn", "fastapi")

RUN_CLI = """
from opsledger.cli.main import app
try:
    app({argv!r}, prog_name="opsledger")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""


def heavy_imported(setup: str) -> list[str]:
    """The heavy libraries a fresh interpreter has loaded after running ``setup``."""
    return loaded_after(setup, HEAVY)


def test_importing_the_cli_loads_no_command_module() -> None:
    assert heavy_imported("import opsledger.cli.main") == []


def test_importing_the_app_package_loads_nothing_heavy() -> None:
    assert heavy_imported("import opsledger.app; opsledger.app.Home") == []


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["log", "--help"], ["keys", "--help"], ["record", "--help"]],
    ids=" ".join,
)
def test_help_loads_nothing_heavy(argv: list[str]) -> None:
    assert heavy_imported(RUN_CLI.format(argv=argv)) == []


def test_root_help_imports_no_command_module() -> None:
    setup = RUN_CLI.format(argv=["--help"]) + (
        "\nloaded = [m for m in sys.modules if m.startswith('opsledger.cli.')]"
        "\nassert sorted(loaded) == ['opsledger.cli._coerce', 'opsledger.cli._state',"
        " 'opsledger.cli.main'], loaded"
    )
    assert heavy_imported(setup) == []


def test_a_read_only_query_loads_nothing_heavy(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init(admin="alice")
    argv = ["--home", str(home), "log", "--json"]
    assert heavy_imported(RUN_CLI.format(argv=argv)) == []


def _eager_root() -> typer.Typer:
    """The root as it was built before it was lazy: every module registered up front."""
    import importlib

    eager = typer.Typer(
        name="opsledger",
        no_args_is_help=True,
        add_completion=False,
        help=app.info.help,
    )
    eager.callback()(root)
    for module in MODULES:
        importlib.import_module(f"opsledger.cli.{module}").register(eager)
    return eager


def _help(app: typer.Typer, *argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def _first_paragraph(command: Any) -> str:
    text = command.short_help or command.help or ""
    return str(inspect.cleandoc(text).split("\n\n")[0].strip())


def test_command_table_matches_the_modules() -> None:
    """Every command a module registers is in ``COMMANDS`` under that module, with its
    first help paragraph; on failure the message is the table to paste."""
    eager = typer.main.get_group(_eager_root())
    real = {name: eager.get_command(None, name) for name in eager.list_commands(None)}  # type: ignore[arg-type]
    owner = {name: module for module in MODULES for name in load_module_commands(module)}
    expected = {name: (owner[name], _first_paragraph(command)) for name, command in real.items()}
    assert expected == COMMANDS, "COMMANDS should be:\n" + "\n".join(
        f"    {name!r}: {value!r}," for name, value in expected.items()
    )
    assert list(COMMANDS) == list(real), "the root help must list commands in this order"
    for command in real.values():
        assert command is not None
        assert not command.hidden and not command.deprecated
        assert not getattr(command, "rich_help_panel", None), "panels are not in the table"


def test_root_help_is_the_eager_roots_help() -> None:
    assert _help(app) == _help(_eager_root())


def test_root_help_from_the_real_commands_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    table_help = _help(app)
    monkeypatch.setattr(OpsledgerGroup, "help_from_table", False)
    assert _help(app) == table_help


@pytest.mark.parametrize("argv", [["log"], ["keys"], ["keys", "new"], ["exec"], ["bundle"]])
def test_command_help_is_unchanged(argv: list[str]) -> None:
    eager = _eager_root()
    if argv == ["bundle"]:  # a module name, not a command: both must refuse it
        lazy = CliRunner().invoke(app, argv)
        assert lazy.exit_code == 2 and "No such command 'bundle'" in lazy.output
        return
    assert _help(app, *argv) == _help(eager, *argv)


def test_tree_walkers_see_every_command() -> None:
    """``scripts/gen_cli_doc.py`` walks ``group.commands``: it must hold the whole tree."""
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert list(commands) == list(COMMANDS)
    assert all(command is not None for command in commands.values())
    assert set(commands["keys"].commands) >= {"new"}


def test_a_lazy_command_runs_and_renders_errors(tmp_path: Path) -> None:
    """The error handler still wraps commands loaded on demand: a missing home is one
    ``error:`` line and exit 2."""
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "none"), "log"])
    assert result.exit_code == 2
    assert "error: no ledger at" in result.output
    assert "Traceback" not in result.output
