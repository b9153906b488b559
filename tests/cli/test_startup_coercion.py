"""Start-up: what a command imports before it works, asserted by ``sys.modules``, never time.

* Typer's coercion through pydantic ``TypeAdapter``s loads pydantic only when a value
  needs it (``opsledger.cli._coerce``): ``str``/``Path``/flags never do, and the values
  and error messages are exactly typer's own, for every kind of option.
* ``opsledger.core`` loads its modules on first use: an error class does not bring in
  Ed25519, and ``client.base`` / the indexer's ledger writes do not either until
  something is signed or recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main
from typer.core import TyperCommand
from typer.testing import CliRunner

from opsledger.cli import _coerce

from .conftest import loaded_after

SIGNING = ("nacl", "cryptography", "opsledger.core.crypto", "opsledger.core.tx")


# -- coercion: the same values and messages as typer's own --------------------------------


class Installed(TyperCommand):
    """A command with the lazy coercion, installed as ``OpsledgerGroup`` does it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _coerce.install(self)


def sample_app(installed: bool = True) -> typer.Typer:
    """One option of every kind the coercion tells apart: ``str``, ``Path`` with each
    path check, and what stays typer's own (``int`` with a bound, a list, flags)."""
    sample = typer.Typer(add_completion=False)  # as the opsledger root

    @sample.command(cls=Installed if installed else TyperCommand)
    def show(
        name: Annotated[str, typer.Option()] = "x",
        maybe: Annotated[str | None, typer.Option()] = None,
        where: Annotated[Path, typer.Option()] = Path("default"),
        existing: Annotated[Path | None, typer.Option(exists=True)] = None,
        a_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
        a_dir: Annotated[Path | None, typer.Option(exists=True, file_okay=False)] = None,
        resolved: Annotated[Path | None, typer.Option(resolve_path=True)] = None,
        env_path: Annotated[Path | None, typer.Option(envvar="SAMPLE_PATH")] = None,
        count: Annotated[int, typer.Option(min=0)] = 1,
        tags: Annotated[list[str] | None, typer.Option()] = None,
        flag: Annotated[bool, typer.Option(envvar="SAMPLE_FLAG")] = False,
    ) -> None:
        values = {k: v for k, v in locals().items() if k != "values"}
        print(json.dumps({k: [type(v).__name__, str(v)] for k, v in values.items()}))

    return sample


def invoke(installed: bool, argv: list[str], env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(sample_app(installed), argv, env=env)
    return result.exit_code, result.stdout, result.stderr


def cases(tmp: Path) -> list[tuple[list[str], dict[str, str] | None]]:
    folder = tmp / "folder"
    folder.mkdir(exist_ok=True)
    file = tmp / "file.txt"
    file.write_text("x")
    missing = str(tmp / "missing")
    return [
        ([], None),
        (["--name", "  a b "], None),
        (["--name", ""], None),
        (["--maybe", "m"], None),
        (["--where", ""], None),
        (["--where", "  spaced  "], None),
        (["--where", "~/x/../y"], None),
        (["--where", "-"], None),
        (["--existing", missing], None),
        (["--existing", str(file)], None),
        (["--a-file", str(folder)], None),
        (["--a-file", str(file)], None),
        (["--a-dir", str(file)], None),
        (["--a-dir", str(folder)], None),
        (["--resolved", "rel/../x"], None),
        ([], {"SAMPLE_PATH": "from/env"}),
        (["--count", "7"], None),
        (["--count", "x"], None),
        (["--count", "-1"], None),
        (["--tags", "a", "--tags", "b"], None),
        (["--flag"], None),
        ([], {"SAMPLE_FLAG": "yes"}),
        ([], {"SAMPLE_FLAG": "nope"}),
        (["--help"], None),
    ]


def test_coercion_gives_typers_values_and_messages(tmp_path: Path) -> None:
    for argv, env in cases(tmp_path):
        ours = invoke(True, argv, env)
        theirs = invoke(False, argv, env)
        assert ours == theirs, (argv, env)


def test_coercion_cases_cover_successes_and_failures(tmp_path: Path) -> None:
    """The comparison above must see both outcomes, or it proves little."""
    codes = {invoke(True, argv, env)[0] for argv, env in cases(tmp_path)}
    assert codes == {0, 2}


def test_install_is_idempotent() -> None:
    sample = sample_app()
    command = typer.main.get_command(sample)
    _coerce.install(command)
    _coerce.install(command)
    result = CliRunner().invoke(sample, ["--where", "p", "--count", "3"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["where"] == ["PosixPath", "p"] and shown["count"] == ["int", "3"]


PROBE_SAMPLE = """
import sys
sys.path.insert(0, {tests!r})
from typer.testing import CliRunner
from cli.test_startup_coercion import sample_app
result = CliRunner().invoke(sample_app(), {argv!r})
assert result.exit_code == 0, result.output
"""


def test_str_path_and_flags_need_no_pydantic() -> None:
    tests = str(Path(__file__).resolve().parents[1])
    argv = ["--name", "n", "--where", "w", "--resolved", ".", "--flag"]
    assert loaded_after(PROBE_SAMPLE.format(tests=tests, argv=argv), ("pydantic",)) == []
    # an int is still typer's (pydantic) conversion, loaded when a value needs it
    counted = PROBE_SAMPLE.format(tests=tests, argv=["--count", "4"])
    assert loaded_after(counted, ("pydantic",)) == ["pydantic"]


RUN_CLI = """
from opsledger.cli.main import app
try:
    app({argv!r}, prog_name="opsledger")
except SystemExit as exc:
    assert exc.code == {code}, exc.code
"""


def test_index_command_loads_neither_pydantic_nor_signing(tmp_path: Path) -> None:
    """Every option of ``opsledger index`` and the root is parsed, the indexer's modules
    load, and the config error ends it (exit 2): nothing on the way needs pydantic or,
    without a home to record on, signing. (``tests/indexer/test_anvil_cli.py`` checks
    the same after a whole backfill.)"""
    argv = ["index", "--config", str(tmp_path / "no.yaml"), "--once"]
    found = loaded_after(RUN_CLI.format(argv=argv, code=2), ("pydantic", *SIGNING))
    assert found == []


def test_a_command_with_an_int_option_still_converts_it(tmp_path: Path) -> None:
    """The delegation path on a real command: ``--limit`` is an ``int`` option."""
    from opsledger.app import Home
    from opsledger.cli import app

    home = tmp_path / "home"
    Home(home).init(admin="alice")
    good = CliRunner().invoke(app, ["--home", str(home), "log", "--limit", "1", "--json"])
    assert good.exit_code == 0, good.output
    assert len(good.stdout.splitlines()) == 1
    bad = CliRunner().invoke(app, ["--home", str(home), "log", "--limit", "many"])
    assert bad.exit_code == 2
    assert "Invalid value for '--limit'" in bad.output


# -- opsledger.core: lazy names ------------------------------------------------------------


def test_core_errors_load_no_signing_code() -> None:
    code = "import opsledger.core\nfrom opsledger.core import ConfigError, OpsledgerError"
    assert loaded_after(code, SIGNING) == []


def test_core_names_load_on_first_use() -> None:
    code = "from opsledger.core import PrivateKey"
    assert "opsledger.core.crypto" in loaded_after(code, SIGNING)


def test_core_exports_every_name_lazily() -> None:
    import opsledger.core as core

    assert set(core.__all__) <= set(dir(core))
    for name in core.__all__:
        value = getattr(core, name)
        assert getattr(value, "__module__", "opsledger.core").startswith("opsledger.core")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = core.nope


def test_client_base_and_indexer_ledger_load_no_signing_code() -> None:
    code = (
        "from opsledger.client.base import NullRecorder, Recorder, Signer\n"
        "from opsledger.indexer.ledger import record_reorg, record_started\n"
        "record_started(NullRecorder(), 'sha256:00', ['local'], 'sqlite:///x.db', True)"
    )
    assert loaded_after(code, SIGNING) == []


def test_indexer_ledger_records_through_a_real_recorder() -> None:
    """The lazy import still builds the transaction for a recorder that keeps it."""
    from opsledger.core import Subject
    from opsledger.indexer.ledger import record_started

    kept: list[tuple[str, Subject, dict[str, Any]]] = []

    class Keep:
        def record(
            self, tx_type: str, subject: Subject, body: dict[str, Any], refs: Any = ()
        ) -> None:
            kept.append((tx_type, subject, body))

        def flush(self, timeout: float = 10.0) -> None:
            return None

        def close(self) -> None:
            return None

    record_started(Keep(), "sha256:00", ["local"], "postgresql://u:pw@h/db", False)
    ((tx_type, subject, body),) = kept
    assert tx_type == "indexer.started" and subject == Subject("service", "indexer")
    assert body["database"] == "postgresql://u:***@h/db" and body["once"] is False
