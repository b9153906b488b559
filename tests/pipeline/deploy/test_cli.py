"""``opsledger deploy`` from flags and from a file; ``deploy status`` and ``deploy down``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.cli import app
from tests.pipeline.deploy.helpers import build_version


def cli(home: Path, *args: str, code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, f"{args}: {result.exit_code}\n{result.output}"
    return result.stdout, result.stderr


@pytest.mark.slow
def test_deploy_from_flags_then_status_and_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init(admin="alice", builtin_contracts=False)
    digest = build_version(tmp_path, "1.0.0")
    artifact = str(tmp_path / "dist" / "app.py")
    flags = ["--service", "shop", "--env", "staging", "--strategy", "blue-green",
             "--command", "python {artifact} --port {port}",
             "--health-path", "/health"]  # fmt: skip
    try:
        out, _ = cli(home, "deploy", *flags, "--version", "1.0.0", "--artifact", artifact,
                     "--commit", "c1", "--json")  # fmt: skip
        outcome = json.loads(out)
        assert outcome["status"] == "success" and len(outcome["tx_ids"]) == 2
        status = json.loads(cli(home, "deploy", "status", "--service", "shop",
                                "--env", "staging", "--json")[0])  # fmt: skip
        assert status["active"]["version"] == "1.0.0"
        assert status["active"]["digest"] == digest
        assert all(i["alive"] for i in status["active"]["instances"])
        answer = httpx.get(status["switch"]["url"] + "/", timeout=5).json()
        assert answer == {"service": "shop", "version": "1.0.0"}
        shown, _ = cli(home, "show", outcome["tx_ids"][1], "--json")
        body = json.loads(shown.splitlines()[0])["transaction"]["body"]
        assert (body["status"], body["commits"], body["digest"]) == ("success", ["c1"], digest)
    finally:
        out, _ = cli(home, "deploy", "down", "--service", "shop", "--env", "staging")
    assert out.startswith("stopped: blue:")
    status = json.loads(cli(home, "deploy", "status", "--service", "shop", "--env", "staging",
                            "--json")[0])  # fmt: skip
    assert status["active"] is None


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init(admin="alice", builtin_contracts=False)
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump({"deploy": {"service": "shop", "environment": "prod",
                                                 "strategy": "blue-green",
                                                 "target": {"kind": "process"}}}))  # fmt: skip
    _, err = cli(home, "deploy", "--config", str(config), "--version", "1",
                 "--digest", "sha256:" + "0" * 64, code=2)  # fmt: skip
    assert (
        err.strip() == f"error: {config}: target.command is required: the command line "
        "that starts one instance"
    )
    _, err = cli(home, "deploy", "--service", "shop", "--version", "1", code=2)
    assert "give --service, --env and --strategy, or --config FILE" in err


def test_protected_in_the_home_config_refuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).init(admin="alice", builtin_contracts=False)
    with (home / "opsledger.yaml").open("a") as fh:
        fh.write("deploy:\n  environments:\n    prod: {protected: true}\n")
    build_version(tmp_path, "1.0.0")
    out, _ = cli(home, "deploy", "--service", "shop", "--env", "prod", "--strategy", "canary",
                 "--command", "python {artifact} --port {port}", "--version", "1.0.0",
                 "--artifact", str(tmp_path / "dist" / "app.py"), code=1)  # fmt: skip
    assert out.startswith("failure: prod is protected: no release-gate verdict")
