"""A real ``nats-server`` with JetStream for tests: its own port, its own store directory.

``running_nats()`` starts ``nats-server -js -a 127.0.0.1 -p <free port> -sd <tmp dir>`` in
a new session, waits until it accepts TCP connections, and kills its whole process group
on exit. A missing binary raises ``FileNotFoundError`` naming the fix, so a test fails
with a clear line instead of being skipped. ``$OPSLEDGER_NATS_SERVER`` names another
binary; otherwise ``nats-server`` on PATH or ``/usr/sbin/nats-server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opsledger.testing.anvil import free_port

__all__ = ["NatsServer", "nats_server_binary", "running_nats"]


def nats_server_binary() -> str:
    """The ``nats-server`` executable; raises ``FileNotFoundError`` naming the fix."""
    explicit = os.environ.get("OPSLEDGER_NATS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("nats-server")
    if found:
        return found
    if Path("/usr/sbin/nats-server").exists():
        return "/usr/sbin/nats-server"
    raise FileNotFoundError(
        "nats-server not found: install it (apt-get install nats-server) or set "
        "OPSLEDGER_NATS_SERVER"
    )


@dataclass
class NatsServer:
    """One running server. ``url`` is what clients connect to."""

    port: int
    store_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Kill the server's process group and reap it (idempotent)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _wait_listening(server: NatsServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"nats-server exited with {server.process.returncode} before listening"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as sock,
        ):
            # The server greets every client with an INFO line once it is ready.
            if sock.recv(4).startswith(b"INFO"):
                return
        time.sleep(0.05)
    raise TimeoutError(f"nats-server did not listen on 127.0.0.1:{server.port} in {timeout} s")


@contextlib.contextmanager
def running_nats(*, store_dir: Path | None = None, timeout: float = 15.0) -> Iterator[NatsServer]:
    """A JetStream server for the ``with`` block; its data lives in ``store_dir`` (default:
    a temporary directory removed afterwards)."""
    binary = nats_server_binary()
    with contextlib.ExitStack() as stack:
        if store_dir is None:
            store_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nats-")))
        port = free_port()
        process = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = NatsServer(port=port, store_dir=store_dir, process=process)
        try:
            _wait_listening(server, timeout)
            yield server
        finally:
            server.stop()
