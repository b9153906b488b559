"""The gateway benchmark (issue 5): one run, one printed table, baselines in the same run.

Run it as a script (it imports its sibling modules)::

    .venv/bin/python bench/gateway.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/gateway.py --quick    # smoke run, about 1.5 minutes
    .venv/bin/python bench/gateway.py --json figures.json --no-profile

Targets: anvil direct, HAProxy round-robin over two anvils (Debian ``haproxy``, default
health check), and ``opsledger gateway --config ...`` over the same two anvils. Needs
``wrk`` and ``haproxy`` (``make bench-gateway`` installs them) and anvil (``make setup``).
Nothing is asserted: the figures are printed beside the issue's targets. See
``docs/gateway-benchmark.md`` for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_load as load
import gateway_nodes as nodes
import gateway_writes as writes
from opsledger.testing.anvil import Anvil


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_facts() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for tool, args in (("haproxy", ["-v"]), ("wrk", ["-v"])):
        path = shutil.which(tool)
        if path:
            done = subprocess.run([path, *args], capture_output=True, text=True, check=False)
            text = (done.stdout + done.stderr).strip().splitlines()
            versions.append(text[0][:60] if text else tool)
    return [
        f"cpu: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
        f"python {platform.python_version()}, {', '.join(versions)}",
    ]


@contextlib.contextmanager
def maybe_gateway(
    upstreams: Sequence[nodes.Upstream], notes: list[str]
) -> Iterator[nodes.GatewayProcess | None]:
    """The gateway, or None (with a note) when it cannot start: the baselines still run."""
    try:
        with nodes.gateway(upstreams) as gw:
            yield gw
    except RuntimeError as exc:
        if "did not start" not in str(exc):
            raise
        notes.append(f"gateway not measured: {str(exc).splitlines()[0]}")
        log(str(exc))
        yield None


# -- sections -------------------------------------------------------------------------


def throughput(args: argparse.Namespace, report: dict[str, Any], notes: list[str]) -> None:
    seconds = args.seconds
    with nodes.anvils(2) as (anvils, contract):
        head = anvils[0].block_number()
        mix = nodes.mix_bodies(contract, head)
        block_bodies = [
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "eth_getBlockByNumber",
                    "params": [hex(i % head + 1), False],
                }
            )
            for i in range(500)
        ]
        number_body = ['{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}']
        workloads: list[tuple[str, str, list[str]]] = [
            ("miss", "miss", []),
            ("dApp mix", "file", mix),
        ]
        if not args.quick:
            workloads = [
                ("eth_blockNumber", "file", number_body),
                ("getBlockByNumber", "file", block_bodies),
                *workloads,
            ]
        with nodes.haproxy(anvils) as hp_url, maybe_gateway(anvils, notes) as gw:
            targets = [("anvil direct", anvils[0].url), ("haproxy", hp_url)]
            if gw is not None:
                targets.append(("gateway", gw.url))
            rows: list[dict[str, Any]] = []
            savings: list[dict[str, Any]] = []
            for workload, kind, bodies in workloads:
                for target, url in targets:
                    before = gw.metrics() if gw is not None and target == "gateway" else {}
                    pid = gw.process.pid if gw is not None and target == "gateway" else None
                    pid = nodes.HAPROXY_PIDS.get(url, pid)
                    cpu0 = nodes.cpu_seconds(pid) if pid is not None else 0.0
                    log(f"throughput: {workload} -> {target}")
                    result = load.run_wrk(
                        url,
                        target,
                        workload,
                        kind=kind,
                        bodies=bodies,
                        connections=args.connections,
                        seconds=seconds,
                    )
                    row = asdict(result) | {"rps": result.rps}
                    if pid is not None:
                        cpu = nodes.cpu_seconds(pid) - cpu0
                        row["proxy_cpu_us_per_request"] = 1e6 * cpu / max(1, result.answered)
                    if gw is not None and target == "gateway":
                        savings.append(saved(workload, before, gw.metrics()))
                    rows.append(row)
            overhead = []
            for target, url in targets:
                log(f"latency at 1 connection: {target}")
                result = load.run_wrk(
                    url, target, "miss", kind="miss", connections=1, seconds=max(1, seconds // 2)
                )
                overhead.append(asdict(result))
            report["throughput"] = rows
            report["savings"] = savings
            report["latency_1conn"] = overhead
            if gw is not None and args.profile:
                report["profile"] = profile_gateway(gw, args, contract)


def saved(workload: str, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    client = delta("gateway_requests_total")
    upstream = delta("gateway_upstream_requests_total")
    return {
        "workload": workload,
        "client_requests": client,
        "upstream_requests": upstream,
        "saved_pct": 100.0 * (client - upstream) / client if client else float("nan"),
        "cache_hits": delta("gateway_cache_hits"),
        "coalesced": delta("gateway_coalesced_total"),
    }


def profile_gateway(
    gw: nodes.GatewayProcess, args: argparse.Namespace, contract: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gwbench-prof-") as tmp:
        for workload in ("miss", "dApp mix"):
            seconds = 3 if args.quick else 6
            log(f"profile: py-spy on the gateway, {workload}")
            kind, bodies = (
                ("miss", []) if workload == "miss" else ("file", nodes.mix_bodies(contract, 50))
            )

            def drive(kind: str = kind, bodies: list[str] = bodies, seconds: int = seconds) -> None:
                load.run_wrk(
                    gw.url,
                    "gateway",
                    "profile",
                    kind=kind,
                    bodies=bodies,
                    connections=args.connections,
                    seconds=seconds + 2,
                )

            thread = threading.Thread(target=drive)
            thread.start()
            time.sleep(0.5)
            summary = nodes.profile(gw.process.pid, seconds, Path(tmp, f"{kind}.txt"))
            thread.join()
            if summary is None:
                return {"note": "py-spy not installed (.venv/bin/pip install py-spy)"}
            out[workload] = summary
    return out


def failures(args: argparse.Namespace, report: dict[str, Any], notes: list[str]) -> None:
    seconds = 4 if args.quick else 12
    at = 1.0 if args.quick else 3.0
    timelines = []
    for scenario in ("kill", "hang"):
        for target in ("haproxy", "gateway"):
            with nodes.anvils(2, seeded=False) as (anvils, _):
                victim = anvils[1]
                action: Callable[[], object] = victim.kill if scenario == "kill" else victim.pause
                label = "SIGKILL node b" if scenario == "kill" else "SIGSTOP node b"
                with contextlib.ExitStack() as stack:
                    if target == "haproxy":
                        url = stack.enter_context(nodes.haproxy(anvils))
                    else:
                        gw = stack.enter_context(maybe_gateway(anvils, notes))
                        if gw is None:
                            continue
                        url = gw.url
                    log(f"failure timeline: {scenario} under load -> {target}")
                    try:
                        result = asyncio.run(
                            load.timeline(
                                url,
                                target,
                                scenario,
                                seconds=seconds,
                                connections=args.timeline_connections,
                                events=[(at, label, action)],
                            )
                        )
                    finally:
                        if scenario == "hang":
                            victim.resume()
                    data = asdict(result)
                    lat = data.pop("latencies")
                    data["p50_ms"] = 1000 * load.percentile(lat, 0.5)
                    data["p99_ms"] = 1000 * load.percentile(lat, 0.99)
                    data["max_ms"] = 1000 * max(lat) if lat else float("nan")
                    timelines.append(data)
    report["timelines"] = timelines


def lagging(args: argparse.Namespace, report: dict[str, Any], notes: list[str]) -> None:
    seconds = 2.0 if args.quick else 8.0
    rows = []
    for target in ("haproxy", "gateway"):
        with nodes.anvils(2, seeded=False) as (anvils, _):
            for node in anvils:
                node.mine(10)
            fresh = anvils[0]
            with contextlib.ExitStack() as stack:
                if target == "haproxy":
                    url = stack.enter_context(nodes.haproxy(anvils))
                else:
                    gw = stack.enter_context(maybe_gateway(anvils, notes))
                    if gw is None:
                        continue
                    url = gw.url

                async def mine_fresh(node: Anvil = fresh) -> None:
                    while True:  # node a keeps mining, node b stays at 10: b lags more and more
                        await asyncio.to_thread(node.mine, 1)
                        await asyncio.sleep(0.25)

                log(f"lagging upstream -> {target}")
                result = asyncio.run(
                    load.consistency(
                        url, target, seconds=seconds, clients=4, background=mine_fresh()
                    )
                )
                rows.append(asdict(result))
    report["lag"] = rows


def replayed_writes(args: argparse.Namespace, report: dict[str, Any], notes: list[str]) -> None:
    """Pre-signed writes beside the read load, node b killed or hung: how many times did
    each transaction reach a node? (see ``gateway_writes.py``)"""
    seconds = 4 if args.quick else 12
    at = 1.0 if args.quick else 3.0
    # HAProxy's server timeout is 10 s and a retry may take another: wait that long for
    # the writes still out, so a replay after a timeout is seen (a quick run does not).
    grace = 3.0 if args.quick else 22.0
    raws = writes.signed_transfers(args.write_rate * seconds)
    rows = []
    for scenario in ("kill", "hang"):
        for target in ("haproxy", "haproxy retry-on", "gateway"):
            with (
                # --no-mining: a write must not advance one node's head, or the other (two
                # independent dev chains) lags behind and leaves the gateway's rotation.
                nodes.anvils(2, seeded=False, extra_args=["--no-mining"]) as (anvils, _),
                writes.counting_nodes(anvils) as counting,
                contextlib.ExitStack() as stack,
            ):
                if target.startswith("haproxy"):
                    url = stack.enter_context(
                        nodes.haproxy(counting, retry_on=target.endswith("retry-on"))
                    )
                else:
                    gw = stack.enter_context(maybe_gateway(counting, notes))
                    if gw is None:
                        continue
                    url = gw.url
                log(f"writes: {scenario} under load -> {target}")
                result = writes.run(
                    url,
                    target,
                    scenario,
                    counting,
                    raws,
                    seconds=seconds,
                    at=at,
                    grace=grace,
                    read_connections=max(1, args.timeline_connections // 2),
                )
                rows.append(asdict(result))
    report["writes"] = rows
    report["write_setup"] = {
        "seconds": seconds,
        "at": at,
        "grace": grace,
        "writes": len(raws),
        "read_connections": max(1, args.timeline_connections // 2),
    }


# -- printing -------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(out)


def render(report: dict[str, Any], notes: list[str]) -> str:
    parts: list[str] = ["# opsledger gateway benchmark", *report["facts"], ""]
    rows = report.get("throughput", [])
    if rows:
        parts.append(
            f"## Throughput (wrk, {report['connections']} connections, {report['seconds']} s each)"
        )
        by_workload: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            by_workload.setdefault(row["workload"], {})[row["target"]] = row
        lines = []
        for workload, targets in by_workload.items():
            hp = targets.get("haproxy")
            for target, row in targets.items():
                ratio = (
                    f"{row['rps'] / hp['rps']:.2f}"
                    if hp and hp["rps"] and target == "gateway"
                    else ""
                )
                cpu = row.get("proxy_cpu_us_per_request")
                lines.append(
                    [
                        workload,
                        target,
                        f"{row['rps']:,.0f}",
                        ratio,
                        f"{row['p50_ms']:.2f}",
                        f"{row['p99_ms']:.2f}",
                        f"{row['sent']:,}",
                        f"{row['answered']:,}",
                        f"{row['failed']:,}",
                        f"{cpu:.0f}" if cpu is not None else "",
                    ]
                )
        parts.append(
            table(
                [
                    "workload",
                    "target",
                    "req/s",
                    "vs haproxy",
                    "p50 ms",
                    "p99 ms",
                    "sent",
                    "answered",
                    "failed",
                    "proxy CPU µs/req",
                ],
                lines,
                left=2,
            )
        )
        parts.append("targets: dApp mix >= 1.00 x haproxy; miss >= 0.50 x haproxy")
        parts.append(
            "proxy CPU µs/req (user+system of the proxy process over the run) does not depend "
            "on the machine's load: 1e6 / it is what one idle core could serve"
        )
        parts.append("")
    if report.get("savings"):
        parts.append("## Upstream requests saved by caching and coalescing (gateway /metrics)")
        parts.append(
            table(
                [
                    "workload",
                    "client requests",
                    "upstream requests",
                    "saved",
                    "cache hits",
                    "coalesced",
                ],
                [
                    [
                        s["workload"],
                        f"{s['client_requests']:,.0f}",
                        f"{s['upstream_requests']:,.0f}",
                        f"{s['saved_pct']:.1f}%",
                        f"{s['cache_hits']:,.0f}",
                        f"{s['coalesced']:,.0f}",
                    ]
                    for s in report["savings"]
                ],
            )
        )
        parts.append("")
    if report.get("latency_1conn"):
        parts.append("## Latency at one connection, cache-miss getBalance (wrk)")
        base = {r["target"]: r["p50_ms"] for r in report["latency_1conn"]}
        direct = base.get("anvil direct", float("nan"))
        parts.append(
            table(
                ["target", "p50 ms", "p99 ms", "p50 overhead vs direct µs"],
                [
                    [
                        r["target"],
                        f"{r['p50_ms']:.3f}",
                        f"{r['p99_ms']:.3f}",
                        f"{1000 * (r['p50_ms'] - direct):.0f}",
                    ]
                    for r in report["latency_1conn"]
                ],
            )
        )
        parts.append("target: gateway p50 overhead < 1000 µs")
        parts.append("")
    if report.get("timelines"):
        parts.append("## Per-second timeline with one upstream failing (aiohttp, cache-miss reads)")
        for t in report["timelines"]:
            parts.append(
                f"{t['scenario']:>4} {t['target']:<8} {', '.join(t['events'])}: "
                f"sent {t['sent']:,}, "
                f"answered {sum(t['answered']):,}, failed {sum(t['failed']):,}, unanswered at end "
                f"{t['unanswered']}, >1 s {sum(t['slow'])}, max latency {t['max_ms']:.0f} ms"
            )
            parts.append("      answered/s: " + " ".join(f"{v:>5}" for v in t["answered"]))
            parts.append("      failed/s:   " + " ".join(f"{v:>5}" for v in t["failed"]))
        parts.append(
            "targets: zero failed reads and no second below half the normal rate on a kill; "
            "a hang costs at most 1 s"
        )
        parts.append("")
    if report.get("lag"):
        parts.append("## One upstream lagging (node a mines 4 blocks/s, node b stays behind)")
        parts.append(
            table(
                [
                    "target",
                    "reads",
                    "backward heads",
                    "wrong nulls",
                    "errors",
                    "first heads seen by client 0",
                ],
                [
                    [
                        r["target"],
                        f"{r['reads']:,}",
                        str(r["backward_heads"]),
                        str(r["wrong_nulls"]),
                        str(r["errors"]),
                        ",".join(map(str, r["heads_seen"][:12])),
                    ]
                    for r in report["lag"]
                ],
            )
        )
        parts.append("target: zero backward heads and zero wrong nulls")
        parts.append("")
    if report.get("writes"):
        setup = report["write_setup"]
        parts.append(
            f"## Writes replayed: {setup['writes']} pre-signed eth_sendRawTransaction over "
            f"{setup['seconds']} s beside {setup['read_connections']} read connections, node b "
            f"fails at t={setup['at']:g}s, arrivals counted at each node"
        )
        parts.append(
            table(
                [
                    "scenario",
                    "target",
                    "writes sent",
                    "ok",
                    "error",
                    "unanswered",
                    "arrivals (a+b)",
                    "replayed",
                    "reads ok",
                    "reads failed",
                ],
                [
                    [
                        r["scenario"],
                        r["target"],
                        f"{r['sent']:,}",
                        f"{r['ok']:,}",
                        f"{r['errors']:,}",
                        f"{r['unanswered']:,}",
                        f"{r['arrivals']:,} ({'+'.join(map(str, r['arrivals_per_node']))})",
                        str(r["replayed"]),
                        f"{r['reads_answered']:,}",
                        f"{r['reads_failed'] + r['reads_unanswered']:,}",
                    ]
                    for r in report["writes"]
                ],
                left=2,
            )
        )
        for r in report["writes"]:
            if r["error_kinds"]:
                kinds = "; ".join(f"{k} x{n}" for k, n in r["error_kinds"].items())
                parts.append(f"{r['scenario']} {r['target']} write errors: {kinds}")
        parts.append(
            f"unanswered: no answer {setup['grace']:g} s after the last write was sent; "
            "replayed: transactions that reached the nodes more than once. target: zero replayed"
        )
        parts.append("")
    prof = report.get("profile")
    if prof:
        parts.append("## Where the gateway's CPU goes (py-spy, self time)")
        if "note" in prof:
            parts.append(prof["note"])
        for workload, summary in prof.items():
            if workload == "note":
                continue
            if "error" in summary:
                parts.append(f"{workload}: py-spy failed: {summary['error'][0][0]}")
                continue
            parts.append(
                f"{workload}, by area: " + "; ".join(f"{a} {p:.0f}%" for a, p in summary["areas"])
            )
            parts.append(f"{workload}, top functions:")
            parts += [f"  {p:5.1f}%  {f[:110]}" for f, p in summary["functions"][:8]]
        parts.append("")
    if notes:
        parts.append("## Notes")
        parts += [f"- {n}" for n in notes]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 90 s)")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--timeline-connections", type=int, default=16)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument(
        "--only", choices=["throughput", "failures", "lag", "writes"], action="append"
    )
    parser.add_argument(
        "--write-rate", type=int, default=25, help="writes per second in the writes section"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1 if args.quick else 5
    if args.quick:
        args.profile = False
    missing = [tool for tool in ("wrk", "haproxy") if shutil.which(tool) is None]
    if missing:
        hint = "run `make bench-gateway` (it installs them)"
        print(f"missing {', '.join(missing)}: {hint}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "facts": machine_facts(),
        "connections": args.connections,
        "seconds": args.seconds,
    }
    notes: list[str] = []
    started = time.monotonic()
    sections = args.only or ["throughput", "failures", "lag", "writes"]
    if "throughput" in sections:
        throughput(args, report, notes)
    if "failures" in sections:
        failures(args, report, notes)
    if "lag" in sections:
        lagging(args, report, notes)
    if "writes" in sections:
        replayed_writes(args, report, notes)
    notes.append(f"whole run: {time.monotonic() - started:.0f} s")
    print(render(report, notes))
    if args.json:
        args.json.write_text(json.dumps(report | {"notes": notes}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
