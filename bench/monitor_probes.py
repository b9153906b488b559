"""Part (a) of ``bench/monitor.py``: probe scheduling overhead with 1,000 targets.

One local aiohttp server (a child process, so its CPU is not the monitor's) answers
EVM-shaped JSON-RPC batches at ``/node/<i>`` on 127.0.0.1: the same four calls the EVM
probe sends (``eth_blockNumber``, ``eth_syncing``, ``net_peerCount``, ``eth_chainId``).
A real ``MonitorService`` runs its probe loops against 1,000 such targets for a bounded
time. Two methods are wrapped to observe it without changing what it does:
``_sleep`` notes when each target's loop *intends* to wake, and ``probe_once`` notes
when it actually starts, so ``lag = actual - intended`` is the scheduling delay the event
loop adds. CPU is this process's ``time.process_time`` over the measured window (the
first interval, when probes are still being spread out, is not measured).

Baseline, same run, same server: the same JSON-RPC batch sent by plain aiohttp requests
in a tight loop (100 concurrent, as the monitor's session allows), i.e. the raw limit of
this client and server on this machine, with its CPU per request.

Run ``python bench/monitor_probes.py serve`` to start the server by hand (prints its port).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from opsledger.monitor.config import Target, parse_monitor_config
from opsledger.monitor.service import MonitorService

CHAINS = 10
BATCH = [
    {"jsonrpc": "2.0", "id": i, "method": method, "params": []}
    for i, method in enumerate(("eth_blockNumber", "eth_syncing", "net_peerCount", "eth_chainId"))
]


# -- the server (child process) ------------------------------------------------------------


def _serve(port: int) -> None:
    started = time.monotonic()

    async def node(request: web.Request) -> web.Response:
        await request.read()
        head = 1_000 + int((time.monotonic() - started) / 2)  # a block every 2 s
        body = json.dumps(
            [
                {"jsonrpc": "2.0", "id": 0, "result": hex(head)},
                {"jsonrpc": "2.0", "id": 1, "result": False},
                {"jsonrpc": "2.0", "id": 2, "result": "0x19"},
                {"jsonrpc": "2.0", "id": 3, "result": "0x1"},
            ]
        )
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/node/{i}", node)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class RpcServer:
    """The child process serving every target."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"the RPC server did not start: {line!r}")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the monitor, instrumented ---------------------------------------------------------------


class TimedMonitor(MonitorService):
    """``MonitorService`` noting intended and actual probe start times."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intended: dict[asyncio.Task[Any] | None, float] = {}
        self.starts: list[tuple[float, float]] = []  # (actual start, lag)
        self.done: list[float] = []

    async def _sleep(self, seconds: float) -> None:
        self.intended[asyncio.current_task()] = time.monotonic() + max(0.0, seconds)
        await super()._sleep(seconds)

    async def probe_once(self, target: Target, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        wanted = self.intended.pop(asyncio.current_task(), now)
        self.starts.append((now, now - wanted))
        await super().probe_once(target, session)
        self.done.append(time.monotonic())


def monitor_config(url: str, targets: int, interval: float, chains: int = CHAINS) -> Any:
    return parse_monitor_config(
        {
            "interval": f"{int(interval * 1000)}ms",
            "timeout": "5s",
            "evaluation_interval": "1h",  # rules are part (b): here only probing is timed
            "targets": [
                {"name": f"node-{i}", "kind": "evm", "url": f"{url}/node/{i}",
                 "chain": f"chain-{i % chains}"}
                for i in range(targets)
            ],
        }
    )  # fmt: skip


@dataclass
class ProbeRun:
    targets: int
    interval: float
    seconds: float
    probes: int
    failed: int
    cpu: float
    lags: list[float] = field(default_factory=list)

    @property
    def configured_rate(self) -> float:
        return self.targets / self.interval

    @property
    def achieved_rate(self) -> float:
        return self.probes / self.seconds

    @property
    def cpu_per_probe(self) -> float:
        return self.cpu / self.probes if self.probes else float("nan")

    def lag(self, q: float) -> float:
        if not self.lags:
            return float("nan")
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run_monitor(
    url: str, targets: int, interval: float, seconds: float, chains: int
) -> ProbeRun:
    service = TimedMonitor(monitor_config(url, targets, interval, chains), rules=[])
    task = asyncio.create_task(service.run())
    warmup = max(interval, 1.0)
    await asyncio.sleep(warmup)
    begin, cpu0 = time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    end, cpu1 = time.monotonic(), time.process_time()
    service.stop()
    await task
    probes = sum(1 for t in service.done if begin <= t < end)
    lags = [lag for at, lag in service.starts if begin <= at < end]
    failed = sum(1 for r in service.last_results.values() if not r["up"])
    return ProbeRun(targets, interval, end - begin, probes, failed, cpu1 - cpu0, lags)


def run_monitor(
    url: str, targets: int, interval: float, seconds: float, *, chains: int = CHAINS
) -> ProbeRun:
    """``targets`` EVM targets spread over ``chains`` chains, probed for ``seconds``."""
    return asyncio.run(_run_monitor(url, targets, interval, seconds, chains))


@dataclass
class RawRun:
    requests: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.requests


async def _raw(url: str, requests: int, concurrency: int, targets: int) -> RawRun:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def worker(numbers: Iterator[int]) -> None:
            for i in numbers:
                async with session.post(f"{url}/node/{i % targets}", json=BATCH) as response:
                    response.raise_for_status()
                    replies = await response.json(content_type=None)
                int(replies[0]["result"], 16)

        warm = iter(range(200))
        await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
        numbers = iter(range(requests))
        begin, cpu0 = time.monotonic(), time.process_time()
        await asyncio.gather(*(worker(numbers) for _ in range(concurrency)))
        return RawRun(requests, time.monotonic() - begin, time.process_time() - cpu0)


def run_raw(url: str, requests: int, targets: int, concurrency: int = 100) -> RawRun:
    return asyncio.run(_raw(url, requests, concurrency, targets))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _serve(int(os.environ.get("PORT", "0")))
