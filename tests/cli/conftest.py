"""Fixtures for the CLI tests: a clean environment, a runner, ledger homes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from opsledger.app import Home
from opsledger.cli import app
from opsledger.client.local import LocalClient
from opsledger.core import Subject

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a developer's ledger or keys from the environment."""
    for name in (
        "OPSLEDGER_HOME",
        "OPSLEDGER_KEY",
        "OPSLEDGER_KEY_FILE",
        "OPSLEDGER_ACTOR",
        "OPSLEDGER_STORE",
        "OPSLEDGER_LISTEN",
    ):
        monkeypatch.delenv(name, raising=False)


Invoke = Callable[..., Result]


def run(
    home: Path | None,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> Result:
    """Invoke the CLI in-process; a Python exception other than exit is a test failure
    (the CLI must never show a traceback for anything a user can type)."""
    argv = (["--home", str(home)] if home is not None else []) + list(args)
    result = CliRunner().invoke(app, argv, input=input, env=env, **extra)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(home: Path | None, *args: str, **kwargs: Any) -> Result:
    result = run(home, *args, **kwargs)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def ok_json(home: Path | None, *args: str, **kwargs: Any) -> Any:
    return json.loads(ok(home, *args, "--json", **kwargs).stdout)


def fails(home: Path | None, *args: str, code: int = 2, **kwargs: Any) -> str:
    """Run, expect ``code``, and return the single stderr line without ``error: ``."""
    result = run(home, *args, **kwargs)
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0].removeprefix("error: ")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    ok(path, "init", "--no-contracts")
    return path


@dataclass
class Ledger:
    """A home with blocks of several transactions each (built through the API: fast)."""

    path: Path
    tx_heights: dict[str, int]
    genesis: str


def build_ledger(path: Path, blocks: int = 4, per_block: int = 5) -> Ledger:
    home = Home(path)
    info = home.init(builtin_contracts=False)
    client = LocalClient(home.open_node())
    signer = home.signer()
    heights: dict[str, int] = {}
    try:
        for b in range(blocks):
            stxs = [
                signer.sign("note", Subject("ticket", f"T-{b}-{i}"), {"text": f"note {b}.{i}"})
                for i in range(per_block)
            ]
            for receipt in client.submit_many(stxs):
                assert not isinstance(receipt, Exception)
                heights[receipt.tx_id] = receipt.height
    finally:
        client.close()
    return Ledger(path, heights, info["genesis_hash"])


@pytest.fixture(scope="module")
def ledger_template(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    return build_ledger(tmp_path_factory.mktemp("template") / "home")


@pytest.fixture
def ledger(ledger_template: Ledger, tmp_path: Path) -> Ledger:
    """A private copy of the template ledger, safe to modify."""
    dest = tmp_path / "ledger"
    shutil.copytree(ledger_template.path, dest)
    (dest / "opsledger.yaml").write_text(
        (dest / "opsledger.yaml")
        .read_text()
        .replace(str(ledger_template.path.resolve()), str(dest.resolve()))
    )
    return Ledger(dest, ledger_template.tx_heights, ledger_template.genesis)


def loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has imported after running ``code``."""
    report = f"print(json.dumps([n for n in {names!r} if n in sys.modules]))"
    probe = f"import json, sys\n{code}\nimport json, sys\n{report}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found
