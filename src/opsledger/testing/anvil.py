"""Real local EVM nodes for tests and benchmarks: anvil from the npm package.

``make setup`` installs ``@foundry-rs/anvil`` (pinned in ``package.json``) into
``node_modules``; ``anvil_binary`` finds it there (or at ``$OPSLEDGER_ANVIL``, or on PATH)
and says how to get it when it is missing, so a test fails with a clear line instead of
being skipped. Each ``Anvil`` listens on 127.0.0.1 on a free port and is killed with its
process group on ``stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Anvil", "anvil_binary", "free_port", "running_anvil"]

DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def anvil_binary() -> str:
    """The anvil executable; raises ``FileNotFoundError`` naming the fix when absent."""
    explicit = os.environ.get("OPSLEDGER_ANVIL")
    if explicit:
        return explicit
    starts = [Path.cwd(), Path(__file__).resolve()]
    for start in starts:
        for folder in [start, *start.parents]:
            candidate = folder / "node_modules" / ".bin" / "anvil"
            if candidate.exists():
                return str(candidate)
    found = shutil.which("anvil")
    if found:
        return found
    raise FileNotFoundError(
        "anvil not found: run `make setup` (npm installs @foundry-rs/anvil into node_modules) "
        "or set OPSLEDGER_ANVIL"
    )


@dataclass
class Anvil:
    """One anvil process. ``rpc`` is a small synchronous JSON-RPC call for test setup."""

    port: int
    process: subprocess.Popen[bytes]
    chain_id: int
    args: tuple[str, ...] = ()
    _ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 2**62)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> Anvil:
        chosen = port or free_port()
        args = [
            anvil_binary(),
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen),
            "--chain-id",
            str(chain_id),
            "--mnemonic",
            DEFAULT_MNEMONIC,
            "--silent",
        ]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        args += list(extra_args)
        process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        node = cls(chosen, process, chain_id, tuple(args[1:]))
        node.wait_ready(timeout)
        return node

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.process.returncode} on start")
            try:
                self.rpc("eth_chainId")
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    message = f"anvil on port {self.port} not ready in {timeout}s"
                    raise TimeoutError(message) from exc
                time.sleep(0.05)

    def rpc(self, method: str, params: Sequence[Any] = (), timeout: float = 10.0) -> Any:
        payload = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": list(params),
        }
        request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            reply = json.loads(response.read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def pause(self) -> None:
        """SIGSTOP: the process hangs, its socket stays open (a hung node)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same port with the same arguments (fresh chain state)."""
        self.stop()
        self.process = subprocess.Popen(
            [anvil_binary(), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_ready(timeout)


@contextlib.contextmanager
def running_anvil(**kwargs: Any) -> Iterator[Anvil]:
    node = Anvil.start(**kwargs)
    try:
        yield node
    finally:
        node.stop()
