"""The indexer benchmark: opsledger against the node's raw ``eth_getLogs`` and its peers,
on one generated chain, in one run. Nothing is asserted; read the ratios.

    .venv/bin/python bench/indexer.py            # ~24,000 events; peers too (minutes)
    .venv/bin/python bench/indexer.py --quick    # 2,000 events; opsledger + floor (<1 min)
    .venv/bin/python bench/indexer.py --skip ponder --json figures.json

Backfill: each indexer reads the whole chain through a counting JSON-RPC proxy (so RPC
calls are counted the same way for all) and is timed from process start until its rows
are complete; the rows are then compared with the node's own logs (``exact``).
opsledger runs ``--repeats`` times, each run right after a floor sample (one
``eth_getLogs`` of every log, straight to the node), so both see the same load; both
figures are medians, and every sample is listed in the notes. A row under the floor
gives the node's own share of it: the same request timed to the reply's last byte,
without the client's JSON parse.
Reorg: each indexer that can follow is started on a fresh copy of the chain, catches up,
sees ``--live-blocks`` new blocks, then anvil replaces the last ``--reorg-depth`` blocks
with different transactions (``anvil_reorg``); the figure is the time from the reorg
until the indexer's rows above the fork point equal the node's logs again.

See docs/indexer-benchmark.md for what each peer is and what was learned about it.
Run it as a script: it imports its sibling package ``indexer_peers``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from indexer_peers import opsledger_run
from indexer_peers.chain import (
    FULL,
    QUICK,
    ChainInfo,
    Rpc,
    calldata,
    ensure_chain,
    start_node,
    wait_receipt,
)
from indexer_peers.peers import (
    Peers,
    PeerUnavailable,
    PonderRun,
    SubsquidFollower,
    run_etl,
    run_subsquid,
)
from indexer_peers.rpcproxy import RpcProxy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
Row = tuple[int, int, str, str]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Figure:
    name: str
    wall: float | None = None
    events: int | None = None
    requests: int | None = None
    calls: int | None = None
    exact: bool | None = None
    reorg_exact_after: float | None = None
    note: str = ""
    methods: dict[str, int] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  # wall times when repeated

    @property
    def events_per_second(self) -> float | None:
        if self.wall and self.events:
            return self.events / self.wall
        return None


# -- truth and floor ------------------------------------------------------------------


def logs_between(url: str, info: ChainInfo, first: int, last: int) -> list[dict[str, Any]]:
    rpc = Rpc(url, timeout=300)
    try:
        result: list[dict[str, Any]] = rpc.call(
            "eth_getLogs",
            [{"address": [info.nft, info.token], "fromBlock": hex(first), "toBlock": hex(last)}],
        )
        return result
    finally:
        rpc.close()


def as_rows(logs: list[dict[str, Any]]) -> set[Row]:
    return {
        (
            int(x["blockNumber"], 16),
            int(x["logIndex"], 16),
            str(x["transactionHash"]).lower(),
            str(x["address"]).lower(),
        )
        for x in logs
    }


def floor_sample(url: str, info: ChainInfo) -> tuple[float, int]:
    """One floor sample: every log of both contracts in one ``eth_getLogs`` straight to
    the node, as a Python client gets them (request, reply, JSON parsed): seconds, logs."""
    started = time.perf_counter()
    count = len(logs_between(url, info, info.deploy_block, info.head))
    return time.perf_counter() - started, count


def bytes_sample(url: str, info: ChainInfo) -> float:
    """The same request, timed until the reply's last byte arrives (nothing parsed): the
    node's own share of the floor, for reference (a Python client's JSON parse of the
    15 MB reply is ~0.1 s of the floor on these machines)."""
    parts = urlsplit(url)
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_getLogs",
            "params": [
                {
                    "address": [info.nft, info.token],
                    "fromBlock": hex(info.deploy_block),
                    "toBlock": hex(info.head),
                }
            ],
        }
    ).encode()
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
    try:
        conn.request("POST", parts.path or "/", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        raw = reply.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    if reply.status != 200 or b'"result"' not in raw[:200]:
        raise RuntimeError(f"eth_getLogs: HTTP {reply.status} {raw[:200]!r}")
    return elapsed


def _samples(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times) + " s"


def floor_figures(
    info: ChainInfo, floors: list[tuple[float, int]], raw: list[float]
) -> tuple[Figure, Figure]:
    """The floor and the node's bytes-only time: each the median of its samples."""
    times = [t for t, _ in floors]
    counts = {c for _, c in floors}
    floor = Figure(
        "node eth_getLogs (floor)",
        wall=statistics.median(times),
        events=max(counts),
        requests=1,
        calls=1,
        exact=counts == {info.events},
        note=f"median of {len(times)}: {_samples(times)}",
        samples=times,
    )
    node = Figure(
        "  of which node, bytes only",
        wall=statistics.median(raw),
        requests=1,
        calls=1,
        note=f"median of {len(raw)}: {_samples(raw)}",
        samples=raw,
    )
    return floor, node


def startup_seconds(work: Path, repeats: int = 5) -> float:
    """The CLI's fixed cost inside opsledger's wall time: ``opsledger index --config
    <missing file> --once`` imports and parses what a real run does, then stops at the
    config error (median of ``repeats``; after ``warm_up``, so with bytecode cached
    unless ``--no-bytecode-cache``)."""
    opsledger_run.warm_up()
    missing = work / "no-such-indexer.yaml"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [*opsledger_run.OPSLEDGER, "index", "--config", str(missing), "--once"],
            capture_output=True,
            check=False,
            cwd=ROOT,
            env=opsledger_run.cli_env(),
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- backfill runs -------------------------------------------------------------------------


def counted(
    proxy: RpcProxy, figure: Figure, run: Callable[[], tuple[float, set[Row]]], truth: set[Row]
) -> Figure:
    proxy.reset()
    try:
        wall, rows = run()
    except PeerUnavailable as exc:
        figure.note = str(exc)
        return figure
    figure.wall = wall
    figure.events = len(rows)
    figure.requests = proxy.counts.requests
    figure.calls = proxy.counts.calls
    figure.methods = dict(proxy.counts.methods)
    figure.exact = rows == truth
    if not figure.exact:
        figure.note = (
            figure.note + f" missing {len(truth - rows)}, extra {len(rows - truth)}"
        ).strip()
    return figure


def opsledger_once(
    proxy: RpcProxy, info: ChainInfo, work: Path, truth: set[Row], figure: Figure
) -> float | None:
    """One ``opsledger index --once`` from scratch into ``figure`` (its counts and
    exactness are this run's; ``figure.wall`` is set by the caller from every run)."""
    folder = work / "opsledger-once"
    shutil.rmtree(folder, ignore_errors=True)
    config = opsledger_run.write_config(folder, proxy.url, info.nft, info.token, info.deploy_block)
    reported: list[int | None] = []
    exact_before = figure.exact

    def run() -> tuple[float, set[Row]]:
        wall, stderr = opsledger_run.run_once(config)
        reported.append(opsledger_run.rpc_calls_reported(stderr))
        return wall, opsledger_run.indexed_rows(config)

    counted(proxy, figure, run, truth)
    if reported and reported[0] is not None and reported[0] != figure.calls:
        figure.note = f"it reports {reported[0]} calls"
    if exact_before is False:
        figure.exact = False  # one inexact run makes the figure inexact
    return figure.wall


def ponder_once(
    folder: Path, proxy: RpcProxy, info: ChainInfo, work: Path, truth: set[Row], timeout: float
) -> tuple[float, set[Row]]:
    """Ponder from a cold PGlite until its rows equal the truth (its /ready comes earlier:
    it backfills only to its own finalized block and indexes the rest live)."""
    started = time.perf_counter()
    run = PonderRun(
        folder, proxy.url, info.nft, info.token, info.deploy_block, info.head, work / "ponder.log"
    )
    try:
        rows: set[Row] = set()
        while time.perf_counter() - started < timeout:
            if not run.alive():
                raise PeerUnavailable(f"ponder exited; see {work / 'ponder.log'}")
            rows = run.rows_above(info.deploy_block - 1) or rows
            if len(rows) >= len(truth):
                return time.perf_counter() - started, rows
            time.sleep(0.25)
        raise PeerUnavailable(f"ponder had {len(rows)} of {len(truth)} rows after {timeout:.0f} s")
    finally:
        run.stop()


# -- reorg runs ----------------------------------------------------------------------------


class Follower(Protocol):
    """What the reorg measurement needs from an indexer that follows the head."""

    def rows_above(self, block: int) -> set[Row] | None: ...

    def stop(self) -> None: ...


class OpsledgerFollower(Follower):
    def __init__(self, rpc: str, info: ChainInfo, work: Path, finality: int) -> None:
        folder = work / "opsledger-follow"
        shutil.rmtree(folder, ignore_errors=True)
        self.config = opsledger_run.write_config(
            folder, rpc, info.nft, info.token, info.deploy_block, poll=0.1, finality=finality
        )
        self.process = opsledger_run.follow(self.config, folder / "index.log")

    def rows_above(self, block: int) -> set[Row] | None:
        try:
            return {r for r in opsledger_run.indexed_rows(self.config) if r[0] > block}
        except Exception:  # the database may be mid-creation; poll again
            return None

    def stop(self) -> None:
        opsledger_run.stop(self.process)


def wait_exact(
    follower: Follower, url: str, info: ChainInfo, above: int, timeout: float
) -> float | None:
    """Seconds until the follower's rows above ``above`` equal the node's; None on timeout."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        head = int(Rpc(url).call("eth_blockNumber"), 16)
        want = as_rows(logs_between(url, info, above + 1, head))
        got = follower.rows_above(above)
        if got is not None and got == want:
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def send_mints(url: str, info: ChainInfo, blocks: int, receiver_index: int) -> None:
    """``blocks`` new blocks (automine: one transaction each), 3 NFT mints per block."""
    rpc = Rpc(url)
    try:
        accounts = rpc.call("eth_accounts")
        data = calldata("mint_many(address[])", ["address[]"], [[accounts[receiver_index]] * 3])
        for _ in range(blocks):
            tx = rpc.call(
                "eth_sendTransaction",
                [{"from": accounts[0], "to": info.nft, "data": data, "gas": hex(1_000_000)}],
            )
            wait_receipt(rpc, tx)  # automine lands a moment later: one block per mint
    finally:
        rpc.close()


def reorg(url: str, info: ChainInfo, depth: int) -> int:
    """Replace the last ``depth`` blocks with blocks of other mints, then mine one more;
    returns the fork block."""
    rpc = Rpc(url)
    try:
        accounts = rpc.call("eth_accounts")
        head = int(rpc.call("eth_blockNumber"), 16)
        data = calldata("mint_many(address[])", ["address[]"], [[accounts[7]] * 2])
        pairs = [
            [{"from": accounts[0], "to": info.nft, "data": data, "gas": hex(1_000_000)}, offset]
            for offset in range(depth)
        ]
        rpc.call("anvil_reorg", [depth, pairs])
        # A reorg reaches followers with the next block: indexers that poll the head's
        # height (Subsquid, Ponder) only look again when it grows, so one empty block
        # follows, as on a live chain.
        rpc.call("evm_mine")
        return head - depth
    finally:
        rpc.close()


def measure_reorg(
    name: str,
    make: Callable[[str], Follower],
    info: ChainInfo,
    proxy: RpcProxy,
    depth: int,
    live_blocks: int,
    timeout: float,
) -> tuple[float | None, str]:
    node = start_node(info)
    proxy.retarget(node.url)
    follower: Follower | None = None
    try:
        follower = make(proxy.url)
        log(f"  {name}: catching up before the reorg ...")
        if wait_exact(follower, node.url, info, info.deploy_block - 1, timeout) is None:
            return None, "did not catch up"
        send_mints(node.url, info, live_blocks, receiver_index=3)
        if wait_exact(follower, node.url, info, info.head, timeout) is None:
            return None, "did not follow live blocks"
        fork = reorg(node.url, info, depth)
        log(f"  {name}: reorg of {depth} blocks above {fork}")
        seconds = wait_exact(follower, node.url, info, fork, timeout)
        return seconds, "" if seconds is not None else f"not exact {timeout:.0f} s after the reorg"
    finally:
        if follower is not None:
            follower.stop()
        node.stop()


# -- report ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".", maxsplit=1)[0] or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def report(
    figures: list[Figure],
    floor: Figure,
    startup: float,
    cached: bool = True,
    node_bytes: Figure | None = None,
) -> str:
    base = next((f for f in figures if f.name.startswith("subsquid") and f.wall), None)
    header = (
        f"{'indexer':<26} {'wall s':>8} {'events':>7} {'events/s':>9} {'HTTP req':>8} "
        f"{'RPC calls':>9} {'exact':>5} {'x floor':>8} {'x sqd t':>8} {'x sqd rpc':>9} "
        f"{'reorg s':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for f in [floor, *([node_bytes] if node_bytes else []), *figures]:
        x_floor = f.wall / floor.wall if f.wall and floor.wall else None
        x_sqd = f.wall / base.wall if f.wall and base and base.wall else None
        x_calls = f.calls / base.calls if f.calls and base and base.calls else None
        lines.append(
            f"{f.name:<26} {_fmt(f.wall, '8.2f')} {f.events if f.events is not None else '-':>7} "
            f"{_fmt(f.events_per_second, '9.0f')} "
            f"{f.requests if f.requests is not None else '-':>8} "
            f"{f.calls if f.calls is not None else '-':>9} "
            f"{'-' if f.exact is None else ('yes' if f.exact else 'NO'):>5} "
            f"{_fmt(x_floor, '8.1f')} {_fmt(x_sqd, '8.2f')} {_fmt(x_calls, '9.2f')} "
            f"{_fmt(f.reorg_exact_after, '8.2f')}  {f.note}"
        )
    lines.append(
        f"(opsledger's wall time includes the CLI's start-up, {startup:.2f} s here, "
        + ("bytecode cached" if cached else "modules recompiled at each start")
        + "; ratios: x floor = wall / floor wall, x sqd = against Subsquid)"
    )
    ours = next((f for f in figures if f.name.startswith("opsledger") and f.wall), None)
    if ours is not None and ours.samples and floor.samples:
        lines.append(
            f"(best runs only: opsledger {min(ours.samples):.2f} s / floor "
            f"{min(floor.samples):.2f} s = {min(ours.samples) / min(floor.samples):.1f}x)"
        )
    if ours is not None and ours.wall and node_bytes is not None and node_bytes.wall:
        lines.append(
            f"(against the node's bytes-only time, without the floor's JSON parse: "
            f"opsledger {ours.wall / node_bytes.wall:.1f}x)"
        )
    return "\n".join(lines)


def facts() -> str:
    load = os.getloadavg()
    node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    return (
        f"machine: {platform.machine()} {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f}; "
        f"Python {platform.python_version()}, node {node}, opsledger @ {commit or '?'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 events; opsledger + floor")
    parser.add_argument(
        "--skip", action="append", default=[], choices=["etl", "subsquid", "ponder", "reorg"]
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="opsledger backfills and floor samples, taken in turn; figures are medians",
    )
    parser.add_argument("--reorg-depth", type=int, default=8)
    parser.add_argument("--live-blocks", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=300.0, help="per indexer and phase")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, help="also save every figure here")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run opsledger with the caller's environment as is (PYTHONDONTWRITEBYTECODE=1:"
        " every start recompiles its modules); default: bytecode cached under RESULTS/pycache",
    )
    args = parser.parse_args(argv)
    if not args.no_bytecode_cache:
        opsledger_run.PYCACHE = args.results.resolve() / "pycache"
    if args.live_blocks <= args.reorg_depth:
        parser.error("--live-blocks must exceed --reorg-depth (anvil reorgs only live blocks)")
    skip = set(args.skip)
    if args.quick:
        skip |= {"etl", "subsquid", "ponder"}

    log(facts())
    info = ensure_chain(args.results, QUICK if args.quick else FULL, log=log)
    work = args.results / "indexer-work"
    work.mkdir(parents=True, exist_ok=True)
    peers = Peers(args.results / "peers")
    log(
        f"chain: {info.events} events ({info.nft_events} ERC-721, {info.token_events} ERC-20) "
        f"in blocks {info.deploy_block}..{info.head}"
    )

    figures: list[Figure] = []
    node = start_node(info)
    try:
        truth = as_rows(logs_between(node.url, info, info.deploy_block, info.head))
        startup = startup_seconds(work)
        with RpcProxy(node.url) as proxy:
            # The floor and opsledger are sampled in turn, so both see the same load, and
            # each figure is the median of its samples (the same statistic on both sides).
            log(f"opsledger: backfill, {args.repeats} runs, each beside a floor sample ...")
            ours = Figure("opsledger index --once")
            floors: list[tuple[float, int]] = []
            raw: list[float] = []
            walls: list[float] = []
            for _ in range(args.repeats):
                floors.append(floor_sample(node.url, info))
                raw.append(bytes_sample(node.url, info))
                wall = opsledger_once(proxy, info, work, truth, ours)
                if wall is None:
                    break
                walls.append(wall)
            floor, node_bytes = floor_figures(info, floors, raw)
            if walls:
                ours.wall = statistics.median(walls)
                ours.samples = walls
                ours.note = (ours.note + f" median of {len(walls)}: {_samples(walls)}").strip()
            figures.append(ours)
            if "subsquid" not in skip:
                log("subsquid: backfill ...")
                figure = Figure("subsquid (evm-processor)")
                try:
                    folder = peers.setup_subsquid(log)
                    counted(
                        proxy,
                        figure,
                        lambda: run_subsquid(
                            folder,
                            proxy.url,
                            info.nft,
                            info.token,
                            info.deploy_block,
                            info.head,
                            work / "sqd.json",
                        ),
                        truth,
                    )
                except PeerUnavailable as exc:
                    figure.note = str(exc)
                figures.append(figure)
            if "etl" not in skip:
                log("ethereum-etl: backfill ...")
                figure = Figure("ethereum-etl")
                try:
                    tool = peers.setup_etl(log)
                    counted(
                        proxy,
                        figure,
                        lambda: run_etl(
                            tool,
                            proxy.url,
                            info.nft,
                            info.token,
                            info.deploy_block,
                            info.head,
                            work / "etl.csv",
                        ),
                        truth,
                    )
                    figure.note = (figure.note + " no follow mode with reorgs").strip()
                except PeerUnavailable as exc:
                    figure.note = str(exc)
                figures.append(figure)
            if "ponder" not in skip:
                log("ponder: backfill (cold) ...")
                figure = Figure("ponder 0.16 (cold)")
                try:
                    pfolder = peers.setup_ponder(log)
                    counted(
                        proxy,
                        figure,
                        lambda: ponder_once(pfolder, proxy, info, work, truth, args.timeout),
                        truth,
                    )
                except PeerUnavailable as exc:
                    figure.note = str(exc)
                figures.append(figure)
    finally:
        node.stop()

    if "reorg" not in skip:
        # Followers must keep more than the reorg's depth of block hashes to undo it.
        finality = args.reorg_depth + 4
        with RpcProxy("http://127.0.0.1:1") as proxy:
            followers: list[tuple[Figure, Callable[[str], Follower]]] = [
                (figures[0], lambda rpc: OpsledgerFollower(rpc, info, work, finality)),
            ]
            sqd = args.results / "peers" / "subsquid"
            pon = args.results / "peers" / "ponder"
            for figure in figures[1:]:
                if figure.name.startswith("subsquid") and figure.wall:
                    followers.append(
                        (
                            figure,
                            lambda rpc: SubsquidFollower(
                                sqd,
                                rpc,
                                info.nft,
                                info.token,
                                info.deploy_block,
                                work / "sqd-follow.log",
                                finality,
                            ),
                        )
                    )
                if figure.name.startswith("ponder") and figure.wall:
                    followers.append(
                        (
                            figure,
                            lambda rpc: PonderRun(
                                pon,
                                rpc,
                                info.nft,
                                info.token,
                                info.deploy_block,
                                None,
                                work / "ponder-follow.log",
                            ),
                        )
                    )
            for figure, make in followers:
                log(f"{figure.name}: reorg of {args.reorg_depth} blocks while following ...")
                seconds, why = measure_reorg(
                    figure.name, make, info, proxy, args.reorg_depth, args.live_blocks, args.timeout
                )
                figure.reorg_exact_after = seconds
                if why:
                    figure.note = (figure.note + f" reorg: {why}").strip()

    print(facts())
    print(
        f"chain: {info.events} events over {info.head - info.deploy_block + 1} blocks; "
        f"reorg depth {args.reorg_depth} after {args.live_blocks} live blocks"
    )
    print(report(figures, floor, startup, opsledger_run.PYCACHE is not None, node_bytes))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "chain": asdict(info),
                    "floor": asdict(floor),
                    "node_bytes": asdict(node_bytes),
                    "startup": startup,
                    "figures": [asdict(f) for f in figures],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
