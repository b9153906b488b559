"""The ``writes`` section of ``bench/gateway.py``: is any write replayed on failover?

Issue 5 asks for zero client-visible read errors when an upstream dies *with no write
replayed*. A replayed ``eth_sendRawTransaction`` is invisible to the client (it gets one
answer), so it is counted where it lands: each anvil gets a small counting JSON-RPC proxy
in front of it (aiohttp, 127.0.0.1, its own process) that appends every raw transaction it
reads to a file before forwarding the request. HAProxy and the gateway see the proxies as
the nodes: the failure is applied to the proxy and its anvil together (SIGKILL both, or
SIGSTOP both), so from the balancer's side it is the same crash or hang as in the failure
timelines. A hung proxy reads what the kernel buffered for it once it is resumed, as a
real node would after a stall: those arrivals count too (the node would have executed
them). The file is written with ``os.write`` per arrival, so a SIGKILL loses none.

The writes are legacy transfers pre-signed with ``eth_account`` from anvil's ten funded
dev accounts (default mnemonic), explicit nonces (sender ``k % 10``, nonce ``k // 10``), so
every raw transaction is distinct and valid on either node (anvil queues a future nonce;
the same transaction twice on one node answers ``nonce too low``).

Run the proxy alone (debugging): ``python bench/gateway_writes.py proxy PORT URL FILE``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

import gateway_load as load
import gateway_nodes as nodes
from opsledger.testing.anvil import DEFAULT_MNEMONIC, Anvil, free_port

_JSON = {"Content-Type": "application/json"}
RECIPIENT = "0x5e5E5e5e5E5e5E5E5e5E5E5e5e5E5E5E5e5E5E5e"  # checksummed: eth_account requires it


# -- the counting proxy (runs in its own process) --------------------------------------


def raw_transactions(body: bytes) -> list[str]:
    """The raw transactions of every ``eth_sendRawTransaction`` in a single or batch body."""
    try:
        message = json.loads(body)
    except ValueError:
        return []
    calls = message if isinstance(message, list) else [message]
    found = []
    for call in calls:
        if isinstance(call, dict) and call.get("method") == "eth_sendRawTransaction":
            params = call.get("params") or []
            if params and isinstance(params[0], str):
                found.append(params[0].lower())
    return found


def proxy_app(upstream: str, log_path: Path) -> web.Application:
    """Forward every request to ``upstream``; append each raw transaction to ``log_path``
    before forwarding (the arrival is what counts, not whether the node answered)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    sessions: list[aiohttp.ClientSession] = []

    async def start(_app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        sessions.append(aiohttp.ClientSession(connector=connector))

    async def stop(_app: web.Application) -> None:
        await sessions[0].close()
        os.close(fd)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b"eth_sendRawTransaction" in body:
            for raw in raw_transactions(body):
                os.write(fd, (raw + "\n").encode())
        try:
            async with sessions[0].request(
                request.method, upstream, data=body, headers=_JSON
            ) as reply:
                data = await reply.read()
                return web.Response(body=data, status=reply.status, content_type="application/json")
        except (aiohttp.ClientError, OSError):
            return web.Response(status=502, text="upstream unreachable")

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def serve(port: int, upstream: str, log_path: Path) -> None:
    web.run_app(
        proxy_app(upstream, log_path), host="127.0.0.1", port=port, print=None, access_log=None
    )


@dataclass
class CountingNode:
    """An anvil behind its counting proxy; HAProxy and the gateway are given the proxy's
    port and URL (WebSocket subscriptions go to the anvil directly: they carry no writes)."""

    anvil: Anvil
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return self.anvil.ws_url

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.anvil.kill()

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.anvil.pause()

    def resume(self) -> None:
        self.anvil.resume()
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self._signal(signal.SIGCONT)
        nodes._stop(self.process)

    def arrivals(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text().split()
        return []


@contextlib.contextmanager
def counting_nodes(anvils: Sequence[Anvil]) -> Iterator[list[CountingNode]]:
    started: list[CountingNode] = []
    with tempfile.TemporaryDirectory(prefix="gwbench-writes-") as tmp:
        try:
            for i, node in enumerate(anvils):
                port = free_port()
                log_path = Path(tmp, f"arrivals-{i}.txt")
                process = subprocess.Popen(
                    [sys.executable, __file__, "proxy", str(port), node.url, str(log_path)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                started.append(CountingNode(node, process, port, log_path))
                nodes._wait_port(port, 15, process)
            yield started
        finally:
            for counting in started:
                counting.stop()


# -- the writes -----------------------------------------------------------------------


def signed_transfers(count: int, chain_id: int = 31337) -> list[str]:
    """``count`` distinct pre-signed transfers from anvil's ten dev accounts."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    keys = [
        Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key
        for i in range(10)
    ]
    raws = []
    for k in range(count):
        tx = {
            "to": RECIPIENT,
            "value": k + 1,
            "gas": 21_000,
            "gasPrice": 10 * 10**9,
            "nonce": k // len(keys),
            "chainId": chain_id,
        }
        signed = Account.sign_transaction(tx, keys[k % len(keys)])
        raws.append("0x" + signed.raw_transaction.hex().removeprefix("0x"))
    return raws


@dataclass
class WriteRun:
    """One scenario against one target: the writes' fate at the client and at the nodes."""

    target: str
    scenario: str
    sent: int
    ok: int
    errors: int
    unanswered: int
    arrivals: int
    replayed: int  # distinct transactions that arrived more than once (on any node)
    arrivals_per_node: list[int]
    reads_answered: int
    reads_failed: int
    reads_unanswered: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def _error_kind(status: int, data: bytes) -> str:
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        reply = json.loads(data)
        if "error" in reply:
            return f"rpc: {str(reply['error'].get('message', reply['error']))[:60]}"
    return f"HTTP {status}"


async def send_writes(
    url: str, raws: Sequence[str], *, seconds: float, grace: float
) -> tuple[int, int, int, collections.Counter[str]]:
    """Send ``raws`` evenly over ``seconds``, each on its own task (a hung write does not
    hold the next one back); wait up to ``grace`` more for answers. Returns sent, ok,
    unanswered and a count of error kinds."""
    kinds: collections.Counter[str] = collections.Counter()
    counts = {"ok": 0}
    interval = seconds / max(1, len(raws))
    start = time.monotonic()

    async def one(session: aiohttp.ClientSession, index: int, raw: str) -> None:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": index, "method": "eth_sendRawTransaction", "params": [raw]}
        )
        try:
            async with session.post(url, data=body, headers=_JSON) as response:
                data = await response.read()
                if response.status == 200 and b'"result"' in data:
                    counts["ok"] += 1
                else:
                    kinds[_error_kind(response.status, data)] += 1
        except (aiohttp.ClientError, OSError) as exc:
            kinds[type(exc).__name__] += 1

    timeout = aiohttp.ClientTimeout(total=seconds + grace)
    connector = aiohttp.TCPConnector(limit=0)
    tasks = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for index, raw in enumerate(raws):
            await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
            tasks.append(asyncio.create_task(one(session, index, raw)))
        remaining = max(0.0, start + seconds + grace - time.monotonic())
        _done, pending = await asyncio.wait(tasks, timeout=remaining) if tasks else ((), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return len(tasks), counts["ok"], len(pending), kinds


async def _both(
    url: str,
    target: str,
    scenario: str,
    raws: Sequence[str],
    *,
    seconds: int,
    grace: float,
    read_connections: int,
    events: Sequence[tuple[float, str, Callable[[], object]]],
) -> tuple[load.Timeline, tuple[int, int, int, collections.Counter[str]]]:
    return await asyncio.gather(
        load.timeline(
            url, target, scenario, seconds=seconds, connections=read_connections, events=events
        ),
        send_writes(url, raws, seconds=seconds, grace=grace),
    )


def run(
    url: str,
    target: str,
    scenario: str,
    counting: Sequence[CountingNode],
    raws: Sequence[str],
    *,
    seconds: int,
    at: float,
    grace: float,
    read_connections: int,
) -> WriteRun:
    """Reads and writes for ``seconds``; node b fails at ``at``; then node b is resumed
    (a hang) and the arrivals are counted once its proxy has read what was buffered."""
    victim = counting[1]
    action: Callable[[], object] = victim.kill if scenario == "kill" else victim.pause
    label = "SIGKILL node b" if scenario == "kill" else "SIGSTOP node b"
    try:
        reads, (sent, ok, unanswered, kinds) = asyncio.run(
            _both(
                url,
                target,
                scenario,
                raws,
                seconds=seconds,
                grace=grace,
                read_connections=read_connections,
                events=[(at, label, action)],
            )
        )
    finally:
        if scenario == "hang":
            victim.resume()
    time.sleep(2.0)  # the resumed proxy reads and logs what the kernel buffered for it
    per_node = [collections.Counter(node.arrivals()) for node in counting]
    total: collections.Counter[str] = collections.Counter()
    for counter in per_node:
        total.update(counter)
    ours = set(raws)
    return WriteRun(
        target=target,
        scenario=scenario,
        sent=sent,
        ok=ok,
        errors=sum(kinds.values()),
        unanswered=unanswered,
        arrivals=sum(n for raw, n in total.items() if raw in ours),
        replayed=sum(1 for raw, n in total.items() if raw in ours and n > 1),
        arrivals_per_node=[sum(c.values()) for c in per_node],
        reads_answered=reads.total_answered,
        reads_failed=reads.total_failed,
        reads_unanswered=reads.unanswered,
        error_kinds=dict(kinds.most_common(4)),
        events=reads.events,
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "proxy":
        serve(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
