"""Fixtures for the API tests: a real SQLite home, a real node, the real FastAPI app, and
a real ``serve`` process for the HTTP client and crash tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from opsledger.api import create_app
from opsledger.app import Home
from opsledger.client.base import LedgerClient, Signer
from opsledger.client.local import LocalClient
from opsledger.core import PrivateKey, SignedTransaction, Subject

with warnings.catch_warnings():
    # starlette 1.x asks for httpx2 under its TestClient; the project pins httpx.
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient` is deprecated"
    )
    from fastapi.testclient import TestClient

SERVE_SCRIPT = """
import sys
from pathlib import Path
from opsledger.app import Home
from opsledger.api.server import serve
serve(Home(Path(sys.argv[1])), sys.argv[2])
"""


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signers come from the home's key files, never from the developer's environment."""
    for name in ("OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR", "OPSLEDGER_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "h")
    home.init(builtin_contracts=False)
    return home


@pytest.fixture
def local_client(home: Home) -> Iterator[LocalClient]:
    client = LocalClient(home.open_node())
    yield client
    client.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def app(local_client: LocalClient, registry: CollectorRegistry) -> FastAPI:
    return create_app(local_client, registry=registry)


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def signer(home: Home) -> Signer:
    return home.signer()


def sign_note(signer: Signer, text: str = "hello") -> SignedTransaction:
    return signer.sign("note", Subject("test", "api"), {"text": text})


@pytest.fixture
def make_note() -> Callable[..., SignedTransaction]:
    """``make_note(signer, text)``: a signed ``note``; ``.leaf`` is what a client sends."""
    return sign_note


def add_actor(client: LedgerClient, admin: Signer, name: str, roles: list[str]) -> Signer:
    key = PrivateKey.generate()
    body = {"actor": name, "public_key": key.public_key.b64, "roles": roles, "kind": "service"}
    client.submit(admin.sign("identity.key_added", Subject("actor", name), body))
    return Signer(name, key, ledger=admin.ledger)


@pytest.fixture
def register_actor() -> Callable[[LedgerClient, Signer, str, list[str]], Signer]:
    """``register_actor(client, admin, name, roles)``: add an actor with a fresh key,
    signed by the admin; returns its signer."""
    return add_actor


class ServerProcess:
    """``opsledger.api.server.serve`` in a child process on a free 127.0.0.1 port.

    Ready when ``serve.json`` names the child's pid (a stale file from a killed server
    names another pid and is ignored)."""

    def __init__(self, home: Home, log_path: Path) -> None:
        self.home = home
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE_SCRIPT, str(self.home.path), "127.0.0.1:0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            info = self._serve_info()
            if info is not None and info.get("pid") == self.proc.pid:
                self.url = str(info["url"])
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout} s: {self.log()}")

    def _serve_info(self) -> dict[str, object] | None:
        try:
            info = json.loads(self.home.serve_path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` to the child (by its pid) and wait; its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[Home], ServerProcess]]:
    """``start_server(home)`` starts a server; every server is killed at teardown."""
    started: list[ServerProcess] = []

    def start(home: Home) -> ServerProcess:
        server = ServerProcess(home, tmp_path / f"server-{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module over a fresh home (starting one takes ~0.5 s)."""
    base = tmp_path_factory.mktemp("served")
    home = Home(base / "h")
    home.init(builtin_contracts=False)
    server = ServerProcess(home, base / "server.log").start()
    yield server
    server.kill()
