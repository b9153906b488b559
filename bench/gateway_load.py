"""Load generators for ``bench/gateway.py``: wrk for throughput, aiohttp for timelines.

wrk (C, one thread) drives the throughput figures: a Python client on the same two
cores would be the bottleneck long before any proxy. Its Lua script builds each POST body
(a fresh random address for the cache-miss workload, a random pick from a file of bodies
for the dApp mix), counts answers that are not HTTP 200 or carry a JSON-RPC ``error``,
and prints its summary as one JSON line.

The timelines and the consistency check need per-request detail (which second a request
was answered in, whether the head went backwards, whether a block came back ``null``), so
they use aiohttp: every request is counted when sent and again when answered or failed,
so a hung request shows up as sent-but-unanswered instead of vanishing.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {}
local kind = "file"
local n = 0
errors = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  kind = args[1]
  math.randomseed(os.time() * 1000 + id)
  if kind == "file" then
    for line in io.lines(args[2]) do table.insert(bodies, line) end
  end
end

function request()
  n = n + 1
  local body
  if kind == "miss" then
    body = string.format(
      '{"jsonrpc":"2.0","id":%d,"method":"eth_getBalance","params":["0x%08x%08x%08x%08x%08x","latest"]}',
      n, math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
      math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  else
    body = bodies[math.random(#bodies)]
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 or string.find(body, '"error"', 1, true) then errors = errors + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("errors") end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"rpc_errors":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, bad, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
end
"""


@dataclass
class LoadResult:
    """One load run. ``sent`` counts requests started; ``answered`` good JSON-RPC replies."""

    target: str
    workload: str
    seconds: float
    sent: int
    answered: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    target: str,
    workload: str,
    *,
    kind: str,
    bodies: Sequence[str] = (),
    connections: int = 32,
    threads: int = 1,
    seconds: float = 5.0,
    timeout_s: float = 5.0,
) -> LoadResult:
    """Run wrk against ``url``; ``kind`` is ``miss`` (random getBalance) or ``file``."""
    with tempfile.TemporaryDirectory(prefix="gwbench-wrk-") as tmp:
        script = Path(tmp, "rpc.lua")
        script.write_text(WRK_SCRIPT)
        body_file = Path(tmp, "bodies.txt")
        body_file.write_text("\n".join(bodies) + "\n")
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            kind,
            str(body_file),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(line.removeprefix("WRKJSON "))
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    failed = data["rpc_errors"] + socket_errors
    return LoadResult(
        target=target,
        workload=workload,
        seconds=data["duration_us"] / 1e6,
        # wrk keeps one request in flight per connection: at most that many were sent
        # and never answered; timeouts are counted in ``failed``.
        sent=data["requests"] + data["timeout"],
        answered=data["requests"] - data["rpc_errors"],
        failed=failed,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        tool="wrk",
    )


def miss_body(rng: random.Random, request_id: int) -> str:
    address = "0x" + "".join(f"{rng.getrandbits(32):08x}" for _ in range(5))
    return (
        f'{{"jsonrpc":"2.0","id":{request_id},"method":"eth_getBalance",'
        f'"params":["{address}","latest"]}}'
    )


@dataclass
class Timeline:
    """Per-second counts of one aiohttp load run, plus totals."""

    target: str
    scenario: str
    seconds: int
    answered: list[int]
    failed: list[int]
    slow: list[int]  # answered, but after more than 1 s
    sent: int
    unanswered: int  # sent, and still without an answer when the run ended
    latencies: list[float] = field(repr=False, default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def total_answered(self) -> int:
        return sum(self.answered)

    @property
    def total_failed(self) -> int:
        return sum(self.failed)


async def timeline(
    url: str,
    target: str,
    scenario: str,
    *,
    seconds: int,
    connections: int = 16,
    events: Sequence[tuple[float, str, Callable[[], object]]] = (),
    request_timeout: float = 30.0,
) -> Timeline:
    """``connections`` workers post cache-miss reads for ``seconds``; ``events`` run at
    their offsets (kill, SIGSTOP) from a thread so the event loop keeps sending."""
    answered = [0] * seconds
    failed = [0] * seconds
    slow = [0] * seconds
    latencies: list[float] = []
    counters = {"sent": 0, "done": 0}
    rng = random.Random(7)
    start = time.monotonic()
    stop_at = start + seconds
    fired: list[str] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            body = miss_body(rng, counters["sent"])
            counters["sent"] += 1
            t0 = time.monotonic()
            ok = False
            try:
                async with session.post(url, data=body, headers=_JSON) as response:
                    data = await response.read()
                    ok = response.status == 200 and b'"error"' not in data
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            t1 = time.monotonic()
            counters["done"] += 1
            second = int(t1 - start)
            if second >= seconds:
                second = seconds - 1
            if ok:
                answered[second] += 1
                latencies.append(t1 - t0)
                if t1 - t0 > 1.0:
                    slow[second] += 1
            else:
                failed[second] += 1

    async def fire() -> None:
        for offset, label, action in sorted(events, key=lambda e: e[0]):
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            await asyncio.to_thread(action)
            fired.append(f"t={offset:g}s {label}")

    timeout = aiohttp.ClientTimeout(total=request_timeout)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        events_task = asyncio.create_task(fire())
        workers = [asyncio.create_task(worker(session)) for _ in range(connections)]
        # Requests still out one second after the end are hung: count them, stop waiting.
        _done, pending = await asyncio.wait(workers, timeout=seconds + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await events_task
    return Timeline(
        target=target,
        scenario=scenario,
        seconds=seconds,
        answered=answered,
        failed=failed,
        slow=slow,
        sent=counters["sent"],
        unanswered=counters["sent"] - counters["done"],
        latencies=latencies,
        events=fired,
    )


_JSON = {"Content-Type": "application/json"}


@dataclass
class Consistency:
    target: str
    reads: int
    backward_heads: int
    wrong_nulls: int
    errors: int
    heads_seen: list[int] = field(default_factory=list)


async def consistency(
    url: str, target: str, *, seconds: float, clients: int = 4, background: Awaitable[Any]
) -> Consistency:
    """Each client alternates ``eth_blockNumber`` and ``eth_getBlockByNumber(its highest
    head seen)``: a head below the highest it saw is a backward head; ``null`` for that
    block is a wrong null (the block was advertised to this client)."""
    totals = {"reads": 0, "backward": 0, "nulls": 0, "errors": 0}
    sample: list[int] = []
    stop_at = time.monotonic() + seconds

    async def call(session: aiohttp.ClientSession, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        async with session.post(url, data=body, headers=_JSON) as response:
            reply = json.loads(await response.read())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        highest = -1
        while time.monotonic() < stop_at:
            try:
                head = int(await call(session, "eth_blockNumber", []), 16)
                totals["reads"] += 1
                if index == 0 and len(sample) < 24:
                    sample.append(head)
                if head < highest:
                    totals["backward"] += 1
                highest = max(highest, head)
                block = await call(session, "eth_getBlockByNumber", [hex(highest), False])
                totals["reads"] += 1
                if block is None:
                    totals["nulls"] += 1
            except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError):
                totals["errors"] += 1

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        miner = asyncio.ensure_future(background)
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        miner.cancel()
        await asyncio.gather(miner, return_exceptions=True)
    return Consistency(
        target, totals["reads"], totals["backward"], totals["nulls"], totals["errors"], sample
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
