"""Fixtures for the deploy tests: a fresh ledger and a state directory whose processes are
always stopped afterwards."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsledger.app import Home
from opsledger.pipeline.deploy.targets.process import stop_all
from tests.pipeline.deploy.helpers import Ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    home = Home(tmp_path / "home")
    home.init(admin="alice", builtin_contracts=False)
    client = home.client()
    try:
        yield Ledger(home, client, home.signer("alice"))
    finally:
        client.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("python") is None:  # the command templates say "python"
        raise RuntimeError("python is not on PATH: the deploy tests start `python app.py`")
    root = tmp_path / "deploy-state"
    root.mkdir()
    yield root
    for service in root.iterdir():
        for environment in service.iterdir():
            stop_all(environment)
