"""The real ``opsledger`` executable: exit codes, stdout purity, help examples."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.main import get_command

from opsledger.cli import app

from .conftest import ok, ok_json

EXE = Path(sys.executable).parent / "opsledger"


def _run(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}
    env["OPSLEDGER_HOME"] = str(home)
    return subprocess.run(
        [str(EXE), *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_exit_codes_and_pure_stdout(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = _run("init", "--no-contracts", "--json", home=home)
    assert init.returncode == 0, init.stderr
    info = json.loads(init.stdout)
    assert init.stderr == ""

    recorded = _run(
        "record",
        "note",
        "--subject",
        "x:y",
        "--body-file",
        "-",
        "--json",
        home=home,
        stdin='{"text": "hi"}',
    )
    assert recorded.returncode == 0, recorded.stderr
    assert set(json.loads(recorded.stdout)) == {"tx_id", "height", "leaf_index"}
    assert recorded.stderr == ""

    verified = _run("verify", "--json", home=home)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True
    assert verified.stderr == ""

    bad = _run("record", "nope.type", "--subject", "x:y", "--body", "{}", home=home)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "error: unknown transaction type 'nope.type'\n"

    usage = _run("record", home=home)
    assert usage.returncode == 2 and usage.stdout == "" and "Traceback" not in usage.stderr

    con = sqlite3.connect(home / "ledger.db")
    con.execute(
        "UPDATE txs SET leaf = CAST(replace(CAST(leaf AS TEXT), 'hi', 'ho') AS BLOB)"
        " WHERE leaf_index = 2"
    )
    con.commit()
    con.close()
    tampered = _run("verify", home=home)
    assert tampered.returncode == 1 and tampered.stdout == ""
    assert tampered.stderr.startswith("error: verification failed: block 1: ")
    assert len(tampered.stderr.splitlines()) == 1
    assert info["genesis_hash"] not in tampered.stderr


def _commands() -> list[tuple[str, ...]]:
    root = get_command(app)
    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(root, ())
    return found


def test_the_verb_list() -> None:
    assert sorted(" ".join(c) for c in _commands()) == sorted(
        [
            "audit report",
            "block",
            "checkpoint",
            "contract deploy",
            "contract list",
            "contract show",
            "contract test",
            "contract verdicts",
            "deploy down",
            "deploy status",
            "dora",
            "exec",
            "export",
            "fork",
            "gateway keys add",
            "gateway keys hash",
            "gateway keys list",
            "head",
            "import",
            "incident ack",
            "incident action",
            "incident assign",
            "incident attribute",
            "incident list",
            "incident open",
            "incident postmortem",
            "incident resolve",
            "incident show",
            "incident update",
            "index serve",
            "index status",
            "init",
            "keys list",
            "keys new",
            "keys revoke",
            "keys rotate",
            "log",
            "monitor maintenance add",
            "monitor maintenance list",
            "monitor rules check",
            "monitor rules export",
            "monitor silence add",
            "monitor silence expire",
            "monitor silence list",
            "pipeline cancel",
            "pipeline list",
            "pipeline logs",
            "pipeline run",
            "pipeline show",
            "proof",
            "record",
            "serve",
            "show",
            "sla report",
            "slo report",
            "verify",
            "worker",
        ]
    )


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_help_has_an_example(command: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert f"opsledger {command[0]}" in result.stdout


def test_serve_then_commands_go_through_it(tmp_path: Path) -> None:
    """``opsledger serve`` holds the writer lock; other commands reach it over HTTP
    (``keys list`` then takes the path for clients without a local registry)."""
    home = tmp_path / "home"
    ok(home, "init", "--no-contracts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(EXE), "--home", str(home), "serve", "--listen", "127.0.0.1:0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if json.loads((home / "serve.json").read_text()).get("pid") == proc.pid:
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "server did not start: " + log.read_text()
            time.sleep(0.05)
        ok(home, "keys", "new", "ci", "--role", "ci", "--kind", "service")
        receipt = ok_json(
            home, "record", "note", "--subject", "x:y", "--field", "text=hi", "--as", "ci"
        )
        assert ok_json(home, "show", receipt["tx_id"])["transaction"]["actor"] == "ci"
        assert len(ok(home, "log", "--json").stdout.splitlines()) == 4
        actors = [
            json.loads(line) for line in ok(home, "keys", "list", "--json").stdout.splitlines()
        ]
        assert [a["actor"] for a in actors] == ["admin", "ci", "node"]
        ok(home, "keys", "rotate", "ci")
        assert ok_json(home, "proof", receipt["tx_id"])["tree_size"] == 5
        assert ok_json(home, "verify")["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not (home / "serve.json").exists()
