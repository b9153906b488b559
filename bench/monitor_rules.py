"""Part (b) of ``bench/monitor.py``: rule evaluation time over 10,000 series.

The data: ``MonitorService``'s own series store filled through the real probe path
(``record_result``) as if N EVM nodes (10 per chain) had been probed every 15 s for an
hour: each node has 25 series (probe up/count/errors/duration, head, lag, head age,
peers, min peers, syncing, chain id, and the 14 series of the RPC latency histogram), so
400 nodes give 10,000 series. A few nodes lag, are down, have few peers or are slow, so
the default rules have something to find.

The rules: ``DEFAULT_RULES`` loaded as the monitor loads them. Figures: a full evaluation
round (``AlertEvaluator.evaluate``, as the monitor's loop calls it) and each rule's
expression alone (``promql.evaluate``), median of a few repeats.

Baselines, same data:

* **Prometheus** (Debian's ``prometheus``/``promtool``): the store is written out as
  OpenMetrics, turned into TSDB blocks with ``promtool tsdb create-blocks-from
  openmetrics``, a real Prometheus is started over them on 127.0.0.1, and each rule's
  expression is queried at the same instant with ``stats=all``; the figure is
  Prometheus's own ``execTotalTime`` (server-side, no HTTP). The number of result series
  per rule is compared with ours, so both evaluated the same thing.
* **floor**: a plain-Python loop that reads, once, exactly the samples each rule's
  selectors need (bisect to the window, sum the values) from a snapshot of the same
  series: the least any Python evaluator must do.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.probes import ProbeResult, record_result
from opsledger.monitor.promql import (
    DEFAULT_LOOKBACK,
    Aggregate,
    Binary,
    Call,
    Expr,
    Negate,
    Selector,
    evaluate,
)
from opsledger.monitor.rules import AlertEvaluator, Rule
from opsledger.monitor.service import MonitorService, build_rules

STEP = 15.0
NODES_PER_CHAIN = 10
SERIES_PER_NODE = 25


@dataclass
class Dataset:
    service: MonitorService
    rules: list[Rule]
    at: float
    series: int
    points: int
    fill_seconds: float


def build_dataset(nodes: int, minutes: int, seed: int = 7) -> Dataset:
    rng = random.Random(seed)
    config = parse_monitor_config(
        {
            "targets": [
                {"name": f"node-{i}", "kind": "evm", "url": f"http://127.0.0.1:1/{i}",
                 "chain": f"chain-{i // NODES_PER_CHAIN}"}
                for i in range(nodes)
            ]
        }
    )  # fmt: skip
    service = MonitorService(config, rules=[])
    rules = build_rules(config)
    steps = int(minutes * 60 / STEP)
    start = 1_700_000_000.0  # fixed, so Prometheus gets the same timestamps
    begin = time.perf_counter()
    for step in range(steps):
        at = start + step * STEP
        for i, target in enumerate(config.targets):
            down = i % 50 == 7 and step > steps // 2
            if down:
                result = ProbeResult(target, False, 5.0, error="TimeoutError")
            else:
                lagging = i % 40 == 3
                slow = i % 25 == 11
                latency = rng.lognormvariate(math.log(0.6 if slow else 0.04), 0.3)
                result = ProbeResult(
                    target,
                    True,
                    latency,
                    {
                        "latency": latency,
                        "head": float(1000 + step // 1 - (12 if lagging else 0)),
                        "syncing": 0.0,
                        "chain_id": 1.0,
                        "peers": 3.0 if i % 30 == 5 else 25.0,
                        "min_peers": 10.0,
                    },
                )
            record_result(service.store, service.chains, result, at)
    fill = time.perf_counter() - begin
    families = service.store.families()
    series = sum(len(points) for *_, points in families)
    points = sum(len(p) for name, *_ in families for _, p in service.store.series(name))
    points += sum(  # histogram parts are listed under their sample names
        len(p)
        for name, kind, *_ in families
        if kind == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
        for _, p in service.store.series(name + suffix)
    )
    return Dataset(service, rules, start + (steps - 1) * STEP, series, points, fill)


def time_round(data: Dataset, repeats: int) -> float:
    """Median seconds of one full ``AlertEvaluator.evaluate`` (all rules, with state)."""
    evaluator = AlertEvaluator(data.rules)
    samples = []
    for i in range(repeats + 1):
        begin = time.perf_counter()
        evaluator.evaluate(data.service.store, data.at + i * 1e-3)
        if i:  # the first round creates the pending alerts
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def time_rules(data: Dataset, repeats: int) -> dict[str, tuple[float, int]]:
    """Rule -> (median seconds, result series) for each expression alone."""
    out: dict[str, tuple[float, int]] = {}
    for rule in data.rules:
        samples = []
        size = 0
        for _ in range(repeats):
            begin = time.perf_counter()
            result = evaluate(rule.expr, data.service.store, data.at)
            samples.append(time.perf_counter() - begin)
            size = len(result) if isinstance(result, list) else 1
        out[rule.alert] = (statistics.median(samples), size)
    return out


# -- the floor ---------------------------------------------------------------------------


def _selectors(expr: Expr) -> Iterator[Selector]:
    if isinstance(expr, Selector):
        yield expr
    elif isinstance(expr, Call):
        for arg in expr.args:
            yield from _selectors(arg)
    elif isinstance(expr, Aggregate | Negate):
        yield from _selectors(expr.expr)
    elif isinstance(expr, Binary):
        yield from _selectors(expr.left)
        yield from _selectors(expr.right)


def time_floor(data: Dataset, repeats: int) -> dict[str, float]:
    """Rule -> median seconds to read each needed sample once from a plain snapshot."""
    snapshot: dict[str, list[tuple[list[float], list[float]]]] = {}
    for rule in data.rules:
        for sel in _selectors(rule.expr):
            if sel.name not in snapshot:
                snapshot[sel.name] = [
                    ([t for t, _ in points], [v for _, v in points])
                    for _, points in data.service.store.series(sel.name)
                ]
    out: dict[str, float] = {}
    at = data.at
    for rule in data.rules:
        selectors = list(_selectors(rule.expr))
        samples = []
        for _ in range(repeats):
            begin = time.perf_counter()
            total = 0.0
            for sel in selectors:
                window = sel.range if sel.range is not None else DEFAULT_LOOKBACK
                for times, values in snapshot.get(sel.name, []):
                    lo = bisect.bisect_left(times, at - window)
                    hi = bisect.bisect_right(times, at)
                    if sel.range is None:
                        if hi > lo:
                            total += values[hi - 1]
                    else:
                        for k in range(lo, hi):
                            total += values[k]
            samples.append(time.perf_counter() - begin)
        out[rule.alert] = statistics.median(samples)
    return out


# -- Prometheus --------------------------------------------------------------------------


@dataclass
class PromResult:
    per_rule: dict[str, tuple[float, int]] = field(default_factory=dict)
    blocks_seconds: float = 0.0
    version: str = ""
    error: str = ""


def _openmetrics(data: Dataset, path: Path) -> int:
    """Every stored point as OpenMetrics (no TYPE lines: plain series, as stored)."""
    count = 0
    names: list[str] = []
    for name, kind, *_ in data.service.store.families():
        names.extend(
            [f"{name}_bucket", f"{name}_sum", f"{name}_count"] if kind == "histogram" else [name]
        )
    with path.open("w") as out:
        for name in names:
            for labels, points in data.service.store.series(name):
                text = ",".join(
                    f'{k}="{v}"' for k, v in labels if k != "__name__"
                )  # label values here need no escaping
                last: dict[float, float] = {}
                for t, v in points:  # one value per timestamp, the last written (as a scrape)
                    last[t] = v
                for t, v in last.items():
                    out.write(f"{name}{{{text}}} {v!r} {t:.3f}\n")
                    count += 1
        out.write("# EOF\n")
    return count


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def prometheus_baseline(data: Dataset, repeats: int, workdir: Path) -> PromResult:
    result = PromResult()
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if not promtool or not prometheus:
        result.error = "promtool/prometheus not installed (Debian package prometheus)"
        return result
    version = subprocess.run([prometheus, "--version"], capture_output=True, text=True, check=False)
    result.version = (version.stdout or version.stderr).split("\n", 1)[0]
    tsdb = workdir / "tsdb"
    tsdb.mkdir()
    source = workdir / "series.om"
    _openmetrics(data, source)
    begin = time.perf_counter()
    made = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
        check=False,
        capture_output=True,
        text=True,
    )
    result.blocks_seconds = time.perf_counter() - begin
    source.unlink()
    if made.returncode != 0:
        result.error = f"create-blocks-from failed: {made.stderr.strip()[-300:]}"
        return result
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = _free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                result.error = "prometheus did not become ready (see prometheus.log)"
                return result
            time.sleep(0.2)
        for rule in data.rules:
            query = urllib.parse.urlencode(
                {"query": rule.expr_text, "time": f"{data.at:.3f}", "stats": "all"}
            )
            samples, size = [], 0
            for _ in range(repeats + 1):  # the first query warms the head/block caches
                answer = _get(f"{base}/api/v1/query?{query}")
                stats = answer["data"].get("stats", {}).get("timings", {})
                samples.append(float(stats.get("execTotalTime", float("nan"))))
                raw = answer["data"]["result"]
                size = len(raw) if isinstance(raw, list) else 1
            result.per_rule[rule.alert] = (statistics.median(samples[1:]), size)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return result


def temp_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="opsledger-monitor-bench-"))
