"""In-process ingest: fresh SQLite homes fed pre-signed transactions through the node,
plus the single-thread breakdown of where one transaction's time goes."""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchkit import (
    ACTORS,
    actor_key,
    actor_of,
    median,
    process_cpu_seconds,
    run_threads,
    timed,
)
from opsledger.app import Home
from opsledger.app.contracts import deploy_builtins
from opsledger.client.local import LocalClient
from opsledger.core import (
    OpsledgerError,
    Receipt,
    Registry,
    SignatureChecker,
    SignedTransaction,
    Subject,
    validate_transaction,
)
from opsledger.core.crypto import DOMAIN_TX
from opsledger.ledger import ContractRule, LedgerNode
from opsledger.ledger.results import JobResultRule
from opsledger.ledger.sigpool import verifier_pids
from opsledger.ordering import Pending
from opsledger.store import LedgerStore, open_store

ACTOR_INDEX = {name: i for i, (name, _, _) in enumerate(ACTORS)}


def check_receipts(results: Sequence[Receipt | OpsledgerError], what: str) -> None:
    errors = [r for r in results if not isinstance(r, Receipt)]
    if errors:
        raise RuntimeError(f"{what}: {len(errors)} transactions refused, first: {errors[0]!r}")


def registrations(home: Home) -> list[SignedTransaction]:
    """``identity.key_added`` for the ten bench actors, signed by the home's admin."""
    admin = home.signer()
    return [
        admin.sign(
            "identity.key_added",
            Subject("actor", name),
            {
                "actor": name,
                "public_key": actor_key(name).public_key.b64,
                "roles": [role],
                "kind": kind,
            },
        )
        for name, role, kind in ACTORS
    ]


def template_home(root: Path) -> Home:
    """One ``opsledger init`` per run; every bench home is a copy of it, so they share a
    genesis and a ledger id and one signed corpus (transactions name their ledger) feeds
    them all."""
    home = Home(root / "_template")
    if not home.exists():
        home.init(builtin_contracts=False)
    return home


def fresh_home(root: Path, name: str, *, contracts: bool = True) -> Home:
    """A copy of the template home; by default with the built-in contracts deployed, as
    a user's home has them (their runner evaluates build/test evidence)."""
    shutil.copytree(template_home(root).path, root / name)
    home = Home(root / name)
    if contracts:
        node = home.open_node()
        try:
            deploy_builtins(LocalClient(node), home.signer())
        finally:
            node.close()
    return home


def db_path(home: Home) -> Path:
    return Path(home.resolve_store(home.config().store).removeprefix("sqlite:///"))


class StoreTimer:
    """Times ``append_block`` on a live store by wrapping the bound method (the node
    calls ``self.store.append_block`` from its committer thread)."""

    def __init__(self, store: LedgerStore) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # process CPU while inside append_block
        self.blocks = 0
        inner = store.append_block

        def append_block(*args: Any, **kwargs: Any) -> None:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu_seconds += time.process_time() - cpu
                self.blocks += 1

        store.append_block = append_block  # type: ignore[method-assign]


@dataclass
class IngestResult:
    label: str
    txs: int
    seconds: float
    store_seconds: float
    blocks: int
    chunk_rates: list[float]
    home: Home
    cpu_seconds: float = 0.0
    drain_seconds: float = 0.0  # attached services still busy after the last receipt

    @property
    def cpu_us_per_tx(self) -> float:
        """CPU of this whole process (every thread) per transaction: unlike the wall
        rate, barely moved by other processes competing for the cores."""
        return self.cpu_seconds / self.txs * 1e6

    @property
    def rate(self) -> float:
        return self.txs / self.seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "txs": self.txs,
            "seconds": self.seconds,
            "tx_per_s": self.rate,
            "store_append_seconds": self.store_seconds,
            "blocks": self.blocks,
            "chunk_tx_per_s_median": median(self.chunk_rates),
            "chunk_tx_per_s_min": min(self.chunk_rates, default=0.0),
            "chunk_tx_per_s_max": max(self.chunk_rates, default=0.0),
            "cpu_us_per_tx": self.cpu_us_per_tx,
            "services_drain_seconds": self.drain_seconds,
            "home": str(self.home.path),
        }


def partition(indexes: Sequence[int], parts: int) -> list[list[int]]:
    """Split corpus positions by actor so each part holds whole actors (a part keeps its
    actors' nonces in order; two parts never race on one actor's nonce)."""
    out: list[list[int]] = [[] for _ in range(parts)]
    for i in indexes:
        out[ACTOR_INDEX[actor_of(i)] % parts].append(i)
    return out


def ingest_many(
    root: Path,
    label: str,
    items: Sequence[bytes | SignedTransaction],
    *,
    chunk: int,
    callers: int = 1,
    contracts: bool = True,
) -> IngestResult:
    """``node.submit_many`` in chunks into a fresh home, from ``callers`` threads."""
    home = fresh_home(root, label, contracts=contracts)
    node = home.open_node()
    try:
        check_receipts(node.submit_many(registrations(home)), "registration")
        timer = StoreTimer(node.store)
        head_before = node.head.height
        chunk_rates: list[float] = []

        def feed(positions: Sequence[int]) -> Callable[[], None]:
            def run() -> None:
                for lo in range(0, len(positions), chunk):
                    part = [items[i] for i in positions[lo : lo + chunk]]
                    start = time.perf_counter()
                    check_receipts(node.submit_many(part), label)
                    chunk_rates.append(len(part) / (time.perf_counter() - start))

            return run

        everything = list(range(len(items)))
        cpu = time.process_time() + verifier_cpu_seconds()
        if callers == 1:
            seconds = timed(feed(everything))
        else:
            seconds = run_threads([feed(p) for p in partition(everything, callers)])
        # Services beside the commit path (the contract runner) may still be working
        # through the last blocks: wait, so the CPU they spend is counted.
        drain = timed(lambda: wait_for_services(node))
        cpu = time.process_time() + verifier_cpu_seconds() - cpu
        blocks = node.head.height - head_before
    finally:
        node.close()
    return IngestResult(
        label, len(items), seconds, timer.seconds, blocks, chunk_rates, home, cpu, drain
    )


def verifier_cpu_seconds() -> float:
    """CPU used so far by the node's signature verifier process(es): ingest's CPU per
    transaction counts it, not only this process's threads."""
    return sum(process_cpu_seconds(pid) for pid in verifier_pids())


def wait_for_services(node: LedgerNode, timeout: float = 600.0) -> None:
    """Wait until every attached service that can say so (``wait_idle``) is idle."""
    for service in node.services:
        wait_idle = getattr(service, "wait_idle", None)
        if wait_idle is not None and not wait_idle(timeout):
            raise RuntimeError(f"{type(service).__name__} still busy after {timeout:.0f} s")


def ingest_singles(
    root: Path, label: str, leaves: Sequence[bytes], *, threads: int, per_thread: int
) -> IngestResult:
    """``node.submit`` one transaction at a time from ``threads`` threads (each waits for
    its block: the node's group commit is what makes this scale)."""
    home = fresh_home(root, label)
    node = home.open_node()
    try:
        check_receipts(node.submit_many(registrations(home)), "registration")
        timer = StoreTimer(node.store)
        head_before = node.head.height
        parts = [p[:per_thread] for p in partition(range(len(leaves)), threads)]
        total = sum(len(p) for p in parts)

        def feed(positions: Sequence[int]) -> Callable[[], None]:
            def run() -> None:
                for i in positions:
                    node.submit(leaves[i])

            return run

        cpu = time.process_time()
        seconds = run_threads([feed(p) for p in parts])
        cpu = time.process_time() - cpu
        blocks = node.head.height - head_before
    finally:
        node.close()
    return IngestResult(label, total, seconds, timer.seconds, blocks, [], home, cpu)


# -- where the time goes -------------------------------------------------------------------


class InlineOrderer:
    """An ``Orderer`` that delivers in the submitting thread, cut like the in-process one
    (``max_batch`` per block), and times the node's commit path (``deliver``)."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._buffer: list[Pending] = []
        self._deliver: Callable[[Sequence[Pending]], None] | None = None

    def start(self, deliver: Callable[[Sequence[Pending]], None]) -> None:
        self._deliver = deliver

    def submit(self, items: Sequence[Pending], *, flush: bool = False) -> None:
        """Buffer as the real orderer's group commit does; deliver full blocks, and the
        rest when the writer says nothing follows."""
        assert self._deliver is not None
        self._buffer.extend(items)
        while len(self._buffer) >= self.max_batch or (flush and self._buffer):
            batch, self._buffer = self._buffer[: self.max_batch], self._buffer[self.max_batch :]
            start, cpu = time.perf_counter(), time.process_time()
            self._deliver(batch)
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu

    def stop(self) -> None:
        self._deliver = None


@dataclass
class Breakdown:
    stages: list[tuple[str, float]]  # (stage, CPU µs per tx)
    total_us: float  # CPU µs per tx, the whole write path on one thread
    wall_us: float  # wall µs per tx of the same passes
    fsync_wait_us: float  # wall minus CPU inside store.append_block, per tx
    txs: int
    profile: str

    def render(self) -> str:
        width = max(len(name) for name, _ in self.stages)
        lines = [f"{'stage'.ljust(width)}  CPU µs/tx  share", f"{'-' * width}  ---------  -----"]
        for name, us in self.stages:
            lines.append(f"{name.ljust(width)}  {us:9.1f}  {us / self.total_us:5.0%}")
        lines.append(f"{'total CPU, one thread'.ljust(width)}  {self.total_us:9.1f}  100%")
        lines.append(
            f"{'(not CPU) waiting for fsync in append_block'.ljust(width)}  "
            f"{self.fsync_wait_us:9.1f}  wall"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "stages_cpu_us_per_tx": dict(self.stages),
            "total_cpu_us_per_tx": self.total_us,
            "wall_us_per_tx": self.wall_us,
            "fsync_wait_us_per_tx": self.fsync_wait_us,
            "txs": self.txs,
        }


def _per_tx_us(fn: Callable[[], object], count: int, repeats: int) -> float:
    """Median CPU time of ``fn`` (``process_time``: not inflated when other processes
    take the core), per item, in µs."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return median(samples) / count * 1e6


@dataclass
class _Pass:
    wall: float
    cpu: float
    deliver_cpu: float
    store_cpu: float
    store_wall: float
    registry: Registry


def _inline_pass(
    root: Path, name: str, leaves: Sequence[bytes], profiler: cProfile.Profile | None
) -> _Pass:
    """One pass of the real write path on this thread, into a fresh home. The node is
    built as ``Home.open_node`` builds it (same rules), minus the contract runner, which
    works beside the commit path and is measured by the ingest rows instead."""
    home = fresh_home(root, name, contracts=False)
    config = home.config()
    store = open_store(home.resolve_store(config.store))
    orderer = InlineOrderer(config.block_max_txs)
    node = LedgerNode(
        store,
        node_key=home.load_key(config.node),
        rules=[ContractRule(), JobResultRule()],
        orderer=orderer,
        checker=SignatureChecker(),
        on_close=store.close,
    ).start()
    try:
        check_receipts(node.submit_many(registrations(home)), "registration")
        registry = node.registry  # lookups only, after the pass
        timer = StoreTimer(store)
        orderer.seconds = orderer.cpu_seconds = 0.0

        def run() -> None:
            for lo in range(0, len(leaves), config.block_max_txs):
                check_receipts(
                    node.submit_many(leaves[lo : lo + config.block_max_txs]), "breakdown"
                )

        if profiler is not None:
            profiler.enable()
        cpu = time.process_time()
        wall = timed(run)
        cpu = time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
        return _Pass(wall, cpu, orderer.cpu_seconds, timer.cpu_seconds, timer.seconds, registry)
    finally:
        node.close()


def breakdown(root: Path, leaves: Sequence[bytes], *, repeats: int, profile: bool) -> Breakdown:
    """Everything on one thread, in CPU time: the real node with an inline orderer and a
    sequential checker (so the whole write path is timed, and profiled, in this thread;
    medians of ``repeats`` passes into fresh homes), then each admission stage on its own
    over the same transactions."""
    profiler = cProfile.Profile() if profile else None
    passes = [
        _inline_pass(root, f"breakdown-{i}", leaves, profiler if i == 0 else None)
        for i in range(repeats)
    ]
    n = len(leaves)

    def per_tx(values: Sequence[float]) -> float:
        return median(values) / n * 1e6

    total_us = per_tx([p.cpu for p in passes])
    deliver_us = per_tx([p.deliver_cpu for p in passes])
    store_us = per_tx([p.store_cpu for p in passes])
    registry = passes[0].registry

    objs = [orjson.loads(leaf) for leaf in leaves]
    stxs = [SignedTransaction.parse(leaf) for leaf in leaves]
    keys = [registry.known_key(stx.tx.key_id) for stx in stxs]
    work = [(k, s.message, s.sig) for k, s in zip(keys, stxs, strict=True) if k is not None]

    def verify_all() -> None:
        for key, message, sig in work:
            key.verify(DOMAIN_TX, message, sig)

    # What ``SignedTransaction.parse`` does with canonical bytes (the fast path): orjson,
    # then the schema, then re-encoding; the strict parser runs only for other input.
    decode_us = _per_tx_us(lambda: [orjson.loads(leaf) for leaf in leaves], n, repeats)

    def schema_all() -> None:
        for obj in objs:
            validate_transaction(obj)

    schema_us = _per_tx_us(schema_all, n, repeats)
    from_dict_us = _per_tx_us(lambda: [SignedTransaction.from_dict(o) for o in objs], n, repeats)
    stages = [
        ("parse: JSON decode (orjson; canonical input)", decode_us),
        ("parse: schema check (validate_transaction)", schema_us),
        ("parse: re-encode + compare, signed message, tx id, objects", from_dict_us - schema_us),
        ("Ed25519 verify (PublicKey.verify, 1 thread)", _per_tx_us(verify_all, n, repeats)),
        ("commit: identity rules, Merkle, block+checkpoint sign", deliver_us - store_us),
        ("commit: store.append_block (SQLite insert, CPU part)", store_us),
    ]
    stages.append(
        ("rest: Pending/futures, lists, GC (total - above)", total_us - sum(us for _, us in stages))
    )
    text = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        text = out.getvalue()
    wall_us = per_tx([p.wall for p in passes])
    fsync_us = per_tx([p.store_wall - p.store_cpu for p in passes])
    return Breakdown(stages, total_us, wall_us, fsync_us, n, text)
