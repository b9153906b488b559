"""Test helpers: real anvils on one genesis and a gateway served from a thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from opsledger.client.base import Recorder
from opsledger.gateway.config import GatewayConfig, parse_config
from opsledger.gateway.server import uvicorn_config
from opsledger.gateway.service import Gateway
from opsledger.testing.anvil import Anvil, free_port

# Same mnemonic, chain id and genesis timestamp: every anvil has the same genesis hash,
# so the gateway treats them as nodes of one chain.
GENESIS_ARGS = ("--timestamp", "1700000000")
ALICE = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def start_anvils(count: int) -> list[Anvil]:
    nodes: list[Anvil] = []
    try:
        for _ in range(count):
            nodes.append(Anvil.start(extra_args=GENESIS_ARGS))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def config_for(nodes: list[Anvil], **overrides: Any) -> GatewayConfig:
    """A config for chain ``local`` over ``nodes`` with fast health checks for tests."""
    chain: dict[str, Any] = {
        "name": "local",
        "chain_id": 31337,
        "finality_depth": 2,
        "upstreams": [
            {"name": f"n{i}", "url": node.url, "ws_url": node.ws_url}
            for i, node in enumerate(nodes)
        ],
    }
    chain.update(overrides.pop("chain", {}))
    data: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "chains": [chain, *overrides.pop("extra_chains", [])],
        "health": {"interval_s": 0.2, "timeout_s": 0.5, "cooldown_s": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, "test")


class Served:
    """A gateway on uvicorn in a background thread (the test thread is the client)."""

    def __init__(self, config: GatewayConfig, recorder: Recorder | None = None) -> None:
        self.config = config
        self.gateway = Gateway(config, recorder)
        self.server = uvicorn.Server(uvicorn_config(self.gateway, loop="asyncio"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{self.config.listen}"

    def url(self, chain: str = "local") -> str:
        return f"{self.base}/rpc/{chain}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def post(
        self, payload: Any, *, path: str | None = None, timeout: float = 15.0
    ) -> tuple[int, dict[str, str], Any]:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = urllib.request.Request(
            path if path and path.startswith("http") else self.base + (path or "/rpc/local"),
            data=data,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return response.status, _lower(response.headers), json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, _lower(exc.headers), json.loads(body) if body else None

    def rpc(self, method: str, params: list[Any] | None = None, **kwargs: Any) -> Any:
        status, _, reply = self.post(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, **kwargs
        )
        assert status == 200, (status, reply)
        assert "error" not in reply, reply
        return reply["result"]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@contextlib.contextmanager
def serving(config: GatewayConfig, recorder: Recorder | None = None) -> Iterator[Served]:
    served = Served(config, recorder)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` (bounded): tests wait for state, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}
