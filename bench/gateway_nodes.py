"""What ``bench/gateway.py`` runs against: seeded anvils, HAProxy and the gateway process.

Every component listens on a free 127.0.0.1 port and is stopped by the context manager
that started it, so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from opsledger.testing.anvil import Anvil, free_port

ROOT = Path(__file__).resolve().parent.parent
SENDER = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"  # anvil's first default account
TOPIC = "0x" + "ab" * 32
# Every call logs TOPIC and returns the word 42 (hand-assembled EVM, so no compiler).
RUNTIME = "7f" + TOPIC[2:] + "60006000a1" + "602a60005260206000f3"
GENESIS_TIMESTAMP = 1_700_000_000
HOT_ADDRESSES = [f"0x{i:040x}" for i in range(0x1000, 0x1000 + 50)]


def _wait_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _receipt(node: Anvil, tx: str) -> dict[str, object]:
    for _ in range(500):
        found = node.rpc("eth_getTransactionReceipt", [tx])
        if found is not None:
            return dict(found)
        time.sleep(0.01)
    raise RuntimeError(f"no receipt for {tx}")


def seed(node: Anvil, *, pokes: int = 20, empty_blocks: int = 30) -> str:
    """Deploy the log contract (same address on every fresh node), call it ``pokes``
    times (one log per block) and mine ``empty_blocks``; returns the contract address."""
    size = len(RUNTIME) // 2
    init = f"60{size:02x}600c60003960{size:02x}6000f3"
    tx = node.rpc("eth_sendTransaction", [{"from": SENDER, "data": "0x" + init + RUNTIME}])
    address = str(_receipt(node, tx)["contractAddress"])
    for _ in range(pokes):
        _receipt(node, node.rpc("eth_sendTransaction", [{"from": SENDER, "to": address}]))
    node.mine(empty_blocks)
    return address


def mix_bodies(contract: str, head: int, count: int = 2000, seed_value: int = 11) -> list[str]:
    """A dApp read mix with a hot set (what a frontend polls): 30% blockNumber, 20%
    getBalance of 50 hot addresses, 15% eth_call, 10% getLogs over 5 hot finalized
    ranges, 15% getBlockByNumber of 20 recent finalized blocks, 10% latest block."""
    rng = random.Random(seed_value)
    ranges = [(start, start + 9) for start in (1, 5, 9, 13, 17)]
    recent = list(range(max(1, head - 25), head - 5))
    bodies = []
    params: list[Any]
    for i in range(count):
        roll = rng.random()
        if roll < 0.30:
            method, params = "eth_blockNumber", []
        elif roll < 0.50:
            method, params = "eth_getBalance", [rng.choice(HOT_ADDRESSES), "latest"]
        elif roll < 0.65:
            method, params = "eth_call", [{"to": contract, "data": "0x"}, "latest"]
        elif roll < 0.75:
            low, high = rng.choice(ranges)
            method = "eth_getLogs"
            params = [{"address": contract, "fromBlock": hex(low), "toBlock": hex(high)}]
        elif roll < 0.90:
            method, params = "eth_getBlockByNumber", [hex(rng.choice(recent)), False]
        else:
            method, params = "eth_getBlockByNumber", ["latest", False]
        bodies.append(
            json.dumps(
                {"jsonrpc": "2.0", "id": i, "method": method, "params": params},
                separators=(",", ":"),
            )
        )
    return bodies


@contextlib.contextmanager
def anvils(
    count: int = 2, *, seeded: bool = True, extra_args: Sequence[str] = ()
) -> Iterator[tuple[list[Anvil], str]]:
    nodes: list[Anvil] = []
    try:
        for _ in range(count):
            # One genesis for all: the nodes are "the same chain" to the gateway, which
            # checks every upstream's block 0 (anvil's genesis hash includes its timestamp).
            nodes.append(
                Anvil.start(extra_args=["--timestamp", str(GENESIS_TIMESTAMP), *extra_args])
            )
        contract = ""
        for node in nodes:
            contract = seed(node) if seeded else ""
        yield nodes, contract
    finally:
        for node in nodes:
            node.stop()


class Upstream(Protocol):
    """What HAProxy and the gateway config need of a node: an anvil, or a counting proxy
    in front of one (``gateway_writes.CountingNode``)."""

    @property
    def port(self) -> int: ...

    @property
    def url(self) -> str: ...

    @property
    def ws_url(self) -> str: ...


HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 30s
    timeout server {server_timeout}s
frontend rpc
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
{retry}{servers}
"""

# Layer-7 retries that replay any request, POST bodies included, on another server: what
# a team adds to HAProxy to hide a dead node from reads (and what replays writes).
HAPROXY_RETRY = """\
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
"""


HAPROXY_PIDS: dict[str, int] = {}  # url -> pid, for CPU per request


@contextlib.contextmanager
def haproxy(
    upstreams: Sequence[Upstream], *, server_timeout: int = 10, retry_on: bool = False
) -> Iterator[str]:
    """HAProxy round-robin over ``upstreams`` with the default health check (TCP
    connect every 2 s, down after 3 failures): the generic balancer a team would use.
    ``retry_on`` adds ``retry-on all-retryable-errors`` and ``option redispatch``."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise FileNotFoundError(
            "haproxy not installed: run `make bench-gateway` (it installs them)"
        )
    port = free_port()
    servers = "\n".join(
        f"    server n{i} 127.0.0.1:{node.port} check" for i, node in enumerate(upstreams)
    )
    with tempfile.TemporaryDirectory(prefix="gwbench-haproxy-") as tmp:
        cfg = Path(tmp, "haproxy.cfg")
        cfg.write_text(
            HAPROXY_CFG.format(
                port=port,
                servers=servers,
                server_timeout=server_timeout,
                retry=HAPROXY_RETRY if retry_on else "",
            )
        )
        process = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_port(port, 10, process)
            HAPROXY_PIDS[f"http://127.0.0.1:{port}/"] = process.pid
            yield f"http://127.0.0.1:{port}/"
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def gateway_config(port: int, upstreams: Sequence[Upstream], *, finality_depth: int = 2) -> str:
    """The issue's smallest config, with WebSocket URLs, on ``port``."""
    lines = [
        "gateway:",
        f'  listen: "127.0.0.1:{port}"',
        "  chains:",
        "    - name: local",
        "      chain_id: 31337",
        f"      finality_depth: {finality_depth}",
        "      upstreams:",
    ]
    for i, node in enumerate(upstreams):
        name = chr(ord("a") + i)
        lines.append(f'        - {{name: {name}, url: "{node.url}", ws_url: "{node.ws_url}"}}')
    return "\n".join(lines) + "\n"


class GatewayProcess:
    """``opsledger gateway --config FILE`` as a subprocess (no ``--home``: records nothing)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rpc/local"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """``/metrics`` summed per metric name over all labels (name -> value)."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=5) as response:
            text = response.read().decode()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if match:
                name, labels, value = match.group(1), match.group(2) or "", match.group(3)
                totals[name] = totals.get(name, 0.0) + float(value)
                if name == "gateway_cache_total" and 'result="hit"' in labels:
                    totals["gateway_cache_hits"] = totals.get("gateway_cache_hits", 0.0) + float(
                        value
                    )
        return totals


@contextlib.contextmanager
def gateway(
    upstreams: Sequence[Upstream], *, timeout: float = 30.0, extra_env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gwbench-gateway-") as tmp:
        cfg = Path(tmp, "gateway.yaml")
        cfg.write_text(gateway_config(port, upstreams))
        log = Path(tmp, "gateway.log")
        exe = Path(sys.executable).with_name("opsledger")
        command = [str(exe), "gateway", "--config", str(cfg)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=tmp,
                env={**os.environ, **(extra_env or {})},
            )
        gw = GatewayProcess(process, port, log)
        try:
            try:
                _wait_port(port, timeout, process)
                _wait_ready(gw, timeout)
            except (RuntimeError, TimeoutError) as exc:
                tail = log.read_text(errors="replace")[-800:]
                raise RuntimeError(f"gateway did not start: {exc}\n{tail}") from exc
            yield gw
        finally:
            _stop(process)


def _wait_ready(gw: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []})
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            request = urllib.request.Request(
                gw.url, data=body.encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                if "result" in json.loads(response.read()):
                    return
        time.sleep(0.1)
    raise TimeoutError(f"gateway answered no eth_blockNumber in {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its children so far (from /proc)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def profile(pid: int, seconds: int, out: Path) -> dict[str, list[tuple[str, float]]] | None:
    """py-spy over ``pid`` for ``seconds``: self time by function and by area, or None
    when py-spy is not installed (``.venv/bin/pip install py-spy``)."""
    spy = Path(sys.executable).with_name("py-spy")
    binary = str(spy) if spy.exists() else shutil.which("py-spy")
    if binary is None:
        return None
    command = [binary, "record", "--pid", str(pid), "--duration", str(seconds)]
    command += ["--format", "raw", "--output", str(out), "--subprocesses", "--nonblocking"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0 or not out.exists():
        return {"error": [(done.stderr.strip()[-300:], 0.0)]}
    by_function: dict[str, int] = {}
    by_area: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.split(";")[-1]
        by_function[leaf] = by_function.get(leaf, 0) + count
        area = _area(stack)
        by_area[area] = by_area.get(area, 0) + count
    if not total:
        return {"error": [("py-spy recorded no samples", 0.0)]}

    def top(counts: dict[str, int], n: int) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:n]
        return [(name, 100.0 * value / total) for name, value in ranked]

    return {"functions": top(by_function, 12), "areas": top(by_area, 10)}


_AREAS = [
    ("opsledger/gateway/", "opsledger.gateway"),
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools", "httptools (HTTP parser)"),
    ("h11/", "h11 (HTTP parser)"),
    ("starlette/", "starlette"),
    ("aiohttp/", "aiohttp"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpcore"),
    ("granian", "granian"),
    ("prometheus_client/", "prometheus_client"),
    ("json/", "json (stdlib)"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop", "uvloop"),
    ("selectors.py", "asyncio event loop"),
]


def _area(stack: str) -> str:
    """The area of the deepest frame we can name (self time, not inclusive)."""
    for frame in reversed(stack.split(";")):
        for needle, area in _AREAS:
            if needle in frame:
                return area
    return "other"
