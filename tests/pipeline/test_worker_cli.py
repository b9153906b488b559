"""``opsledger worker``: configuration errors are one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.app.workers import queue_settings, worker_signer
from opsledger.cli.main import app


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    home.init(admin="alice", builtin_contracts=False)
    return home


def _worker(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--home", str(home.path), "worker", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_without_a_queue_the_worker_says_how_to_name_one(home: Home) -> None:
    code, output = _worker(home)
    assert code == 2
    assert "no job queue: pass --nats" in output


def test_a_bad_url_is_refused(home: Home) -> None:
    code, output = _worker(home, "--nats", "http://127.0.0.1:4222")
    assert code == 2
    assert "--nats must be nats://" in output


def test_config_errors_name_the_file_and_key(home: Home) -> None:
    with home.config_path.open("a") as config:
        config.write("jobs:\n  queue: nats://127.0.0.1:4222\n  ack_wait: soon\n")
    code, output = _worker(home)
    assert code == 2
    assert "opsledger.yaml: jobs.ack_wait" in output
    assert "soon" in output


def test_settings_come_from_the_jobs_section_and_flags_win(home: Home) -> None:
    assert queue_settings(home) is None  # no queue: jobs run locally
    with home.config_path.open("a") as config:
        config.write("jobs:\n  queue: nats://127.0.0.1:4222\n  name: builds\n  ack_wait: 5s\n")
    settings = queue_settings(home)
    assert settings is not None
    assert (settings.queue, settings.ack_wait) == ("builds", 5.0)
    override = queue_settings(home, url="nats://127.0.0.1:5222", queue="other", ack_wait=2.0)
    assert override is not None
    assert (override.url, override.queue, override.ack_wait) == (
        "nats://127.0.0.1:5222",
        "other",
        2.0,
    )


def test_workers_never_sign_with_the_admin_key_by_default(home: Home) -> None:
    assert worker_signer(home, None).actor == "ci"
    assert worker_signer(home, "alice").actor == "alice"  # only when asked
