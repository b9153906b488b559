"""opsledger monitor benchmark: probe scheduling with 1,000 targets, and rule evaluation
over 10,000 series, each figure beside a baseline measured in the same run. No figure is
asserted; this only measures.

    .venv/bin/python bench/monitor.py            # default, a few minutes on 2 cores
    .venv/bin/python bench/monitor.py --quick    # ~1 minute smoke run
    .venv/bin/python bench/monitor.py --json out.json --no-prometheus

(a) ``monitor_probes.py``: a real ``MonitorService`` probes 1,000 EVM-shaped JSON-RPC
targets served by one local aiohttp server; baseline: the same requests in a tight aiohttp
loop. (b) ``monitor_rules.py``: the default rules over 10,000 series holding up to an hour
of samples; baselines: a real Prometheus over the same samples, and a plain-Python floor.
Both end with a cProfile summary: where the time goes. docs/monitor-benchmark.md explains
each figure and shows a run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchkit import CpuWatch, Report, Row, machine_facts
from monitor_probes import RpcServer, run_monitor, run_raw
from monitor_rules import (
    build_dataset,
    prometheus_baseline,
    temp_workdir,
    time_floor,
    time_round,
    time_rules,
)
from opsledger.monitor.rules import AlertEvaluator


@dataclass(frozen=True)
class Plan:
    mode: str
    targets: int
    intervals: tuple[float, ...]
    probe_seconds: float
    raw_requests: int
    nodes: int
    minutes: int
    repeats: int


QUICK = Plan("quick", 1000, (2.0,), 4.0, 2000, 400, 10, 3)
DEFAULT = Plan("default", 1000, (5.0, 1.0), 10.0, 5000, 400, 60, 5)


def _progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def _profile_text(profile: cProfile.Profile, lines: int = 12) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(lines)
    text = out.getvalue()
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def bench_probes(plan: Plan, report: Report) -> str:
    """Part (a); returns the cProfile summary."""
    server = RpcServer()
    try:
        _progress(f"raw aiohttp loop: {plan.raw_requests} requests")
        raw = run_raw(server.url, plan.raw_requests, plan.targets)
        layouts = [(interval, 10) for interval in plan.intervals]
        if plan.mode != "quick":
            layouts.append((plan.intervals[-1], plan.targets))  # one node per chain
        for interval, chains in layouts:
            _progress(f"monitor: {plan.targets} targets every {interval:g} s, {chains} chains")
            watch = CpuWatch.start()
            run = run_monitor(server.url, plan.targets, interval, plan.probe_seconds, chains=chains)
            busy = watch.others_cores()
            what = f"{plan.targets} targets @{interval:g}s, {plan.targets // chains}/chain"
            report.add(
                Row("a", f"probes/s ({what})", run.achieved_rate, "probes/s",
                    "raw aiohttp loop (limit)", raw.rate,
                    note=f"configured {run.configured_rate:.0f}/s")
            )  # fmt: skip
            report.add(Row("a", f"  configured rate reached ({what})",
                           run.achieved_rate / run.configured_rate * 100, "%"))  # fmt: skip
            report.add(Row("a", f"  scheduling lag p50 ({what})", run.lag(0.5) * 1e3, "ms"))
            report.add(Row("a", f"  scheduling lag p99 ({what})", run.lag(0.99) * 1e3, "ms"))
            report.add(
                Row("a", f"  CPU per probe ({what})", run.cpu_per_probe * 1e6, "us",
                    "raw aiohttp request", raw.cpu_per_request * 1e6)
            )  # fmt: skip
            report.note(
                f"(a) {what}: {run.probes} probes in {run.seconds:.1f} s; {run.failed} targets "
                f"whose last probe failed (a loop that falls behind times out); other "
                f"processes kept {busy:.2f} cores busy"
            )
        _progress("profiling the monitor (3 s)")
        profile = cProfile.Profile()
        profile.enable()
        run_monitor(server.url, plan.targets, plan.intervals[-1], 3.0, chains=10)
        profile.disable()
    finally:
        server.close()
    return _profile_text(profile)


def bench_rules(plan: Plan, report: Report, *, prometheus: bool) -> str:
    """Part (b); returns the cProfile summary."""
    _progress(f"filling the store: {plan.nodes} nodes x {plan.minutes} min of 15 s probes")
    data = build_dataset(plan.nodes, plan.minutes)
    report.note(
        f"(b) {data.series:,} series, {data.points:,} stored points ({plan.nodes} EVM nodes, "
        f"{plan.minutes} min every 15 s; filled through record_result in {data.fill_seconds:.1f} s)"
        f", {len(data.rules)} default rules"
    )
    _progress("timing rule evaluation")
    whole = time_round(data, plan.repeats)
    rules = time_rules(data, plan.repeats)
    floor = time_floor(data, plan.repeats)
    prom = None
    if prometheus:
        workdir = temp_workdir()
        try:
            _progress("Prometheus baseline: blocks from OpenMetrics, then queries")
            prom = prometheus_baseline(data, plan.repeats, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if prom.error:
            report.note(f"(b) Prometheus baseline skipped: {prom.error}")
            prom = None
        else:
            report.note(f"(b) {prom.version}; promtool made the blocks in "
                        f"{prom.blocks_seconds:.1f} s (not part of any figure)")  # fmt: skip
    what = f"{data.series:,} series"
    if prom is not None:
        prom_total = sum(seconds for seconds, _ in prom.per_rule.values())
        report.add(Row("b", f"full evaluation round ({what})", whole * 1e3, "ms",
                       "Prometheus, same rules and data", prom_total * 1e3))  # fmt: skip
    report.add(Row("b", f"full evaluation round ({what})", whole * 1e3, "ms",
                   "plain-Python floor", sum(floor.values()) * 1e3))  # fmt: skip
    disagree = []
    for name, (seconds, size) in rules.items():
        if prom is not None:
            prom_seconds, prom_size = prom.per_rule[name]
            if prom_size != size:
                disagree.append(f"{name}: ours {size}, Prometheus {prom_size}")
            row = Row("b", f"  {name} ({size} alerts)", seconds * 1e6, "us",
                      "Prometheus", prom_seconds * 1e6)  # fmt: skip
        else:
            row = Row("b", f"  {name} ({size} alerts)", seconds * 1e6, "us",
                      "plain-Python floor", floor[name] * 1e6)  # fmt: skip
        report.add(row)
    if prom is not None:
        report.note(
            "(b) result series per rule: "
            + ("identical to Prometheus's for every rule" if not disagree else "; ".join(disagree))
        )
    _progress("profiling one evaluation round")
    evaluator = AlertEvaluator(data.rules)
    profile = cProfile.Profile()
    profile.enable()
    evaluator.evaluate(data.service.store, data.at)
    profile.disable()
    return _profile_text(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--no-prometheus", action="store_true",
                        help="skip the Prometheus baseline (plain-Python floor only)")  # fmt: skip
    parser.add_argument("--skip-probes", action="store_true", help="only part (b)")
    parser.add_argument("--skip-rules", action="store_true", help="only part (a)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else DEFAULT
    report = Report()
    facts = machine_facts(plan.mode, Path.cwd())
    for key in ("PyNaCl", "cryptography", "SQLite", "work dir"):
        facts.pop(key, None)
    for dist in ("aiohttp", "prometheus-client"):
        try:
            facts[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            facts[dist] = "not installed"
    report.facts = facts
    started = time.perf_counter()
    profiles: dict[str, str] = {}
    if not args.skip_probes:
        profiles["(a) monitor probe loop, top functions by own time"] = bench_probes(plan, report)
    if not args.skip_rules:
        profiles["(b) one evaluation round, top functions by own time"] = bench_rules(
            plan, report, prometheus=not args.no_prometheus
        )
    print(report.facts_text())
    print()
    print(report.render())
    print()
    for note in report.notes:
        print(f"- {note}")
    for title, text in profiles.items():
        print(f"\n{title}:\n{text}")
    print(f"\n(wall time {time.perf_counter() - started:.0f} s)")
    if args.json:
        document = report.to_json()
        document["profiles"] = profiles
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
