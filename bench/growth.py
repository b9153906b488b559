"""One real ledger grown to 10^3, 10^4, 10^5 (and 10^6) transactions; at each size:
inclusion proofs, bytes stored per transaction, and evidence lookups."""

from __future__ import annotations

import hashlib
import math
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchkit import TX_PER_ARTIFACT, artifact_digest, median, timed
from ingest import check_receipts, db_path, fresh_home, registrations
from opsledger.core import leaf_hash, parse_checkpoint, verify_inclusion
from opsledger.ledger import LedgerNode
from opsledger.store import TxQuery

T = TypeVar("T")

_SELECT = (
    "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, nonce, leaf "
    "FROM txs {hint} WHERE {where} ORDER BY leaf_index {order} LIMIT ?"
)
SUBJECT_WHERE = "subject_kind = ? AND subject_id = ?"
TYPE_WHERE = "type = ?"
TYPE_LIMIT = 10
"""By type: the latest 10 ``deploy.finished`` (1% of the corpus), as a dashboard asks."""


@dataclass
class SizeResult:
    size: int
    build_seconds: float
    build_txs: int
    proof_hashes_mean: float
    proof_hashes_max: int
    proof_gen_us: float
    point_read_us: float
    proof_verify_us: float
    sha_path_us: float
    bytes_per_tx: float
    checkpoint_busy: bool
    subject_us: float
    subject_scan_us: float
    subject_hits: float
    type_us: float
    type_scan_us: float
    type_hits: float
    plans: dict[str, str] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _us(samples: list[float]) -> float:
    return median(samples) * 1e6


def _time_each(fn: Callable[[T], object], args: Sequence[T]) -> list[float]:
    """Seconds of each ``fn(arg)``, one sample per argument."""
    out = []
    for arg in args:
        start = time.perf_counter()
        fn(arg)
        out.append(time.perf_counter() - start)
    return out


def _sha_path(length: int, repeats: int) -> list[float]:
    """The least work any verifier does for a proof of ``length`` hashes: that many
    SHA-256 node hashes, with nothing else."""
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        r = a
        for _ in range(length):
            r = hashlib.sha256(b"\x01" + b + r).digest()
        out.append(time.perf_counter() - start)
    return out


def _checkpoint_wal(path: Path) -> bool:
    """Fold the WAL into the main file so the file size is the data size; True if busy."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return bool(busy)
    finally:
        conn.close()


def _table_bytes(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    return {str(name): int(size) for name, size in rows}


def measure_size(
    node: LedgerNode,
    path: Path,
    size: int,
    *,
    samples: int,
    scan_repeats: int,
    rng: random.Random,
    build_seconds: float,
    build_txs: int,
    consumed: int,
) -> SizeResult:
    store = node.store
    if node.head.log_size != size:
        raise RuntimeError(f"ledger is at {node.head.log_size}, expected {size}")

    # -- 5. inclusion proofs against the head checkpoint (tree size == size) --
    indexes = [rng.randrange(size) for _ in range(samples)]
    tx_ids = []
    for index in indexes:
        record = store.get_tx_by_leaf(index)
        assert record is not None
        tx_ids.append(record.tx_id)
    proofs: list[dict[str, Any]] = []
    gen = _time_each(lambda t: proofs.append(node.inclusion_proof(t)), tx_ids)
    reads = _time_each(node.get_tx, tx_ids)
    root = parse_checkpoint(proofs[0]["checkpoint"])[0].root
    decoded = [
        (
            p["leaf_index"],
            p["tree_size"],
            bytes.fromhex(p["leaf_hash"]),
            [bytes.fromhex(h) for h in p["hashes"]],
        )
        for p in proofs
    ]
    for (index, tree_size, leaf, hashes), tx_id in zip(decoded, tx_ids, strict=True):
        record = store.get_tx(tx_id)
        assert record is not None
        assert leaf_hash(record.leaf) == leaf
        assert tree_size == size
        verify_inclusion(index, tree_size, leaf, hashes, root)  # correctness, untimed
    verify = _time_each(lambda d: verify_inclusion(d[0], d[1], d[2], d[3], root), decoded)
    lengths = [len(d[3]) for d in decoded]
    sha = _sha_path(round(sum(lengths) / len(lengths)), samples)

    # -- 6. bytes per transaction, after folding the WAL into the file --
    busy = _checkpoint_wal(path)
    bytes_per_tx = store.size_bytes() / size

    # -- 7. evidence lookups through the node, and the same SQL forced to scan --
    groups = max(1, consumed // TX_PER_ARTIFACT)  # artifacts the corpus slice covers
    digests = [artifact_digest(rng.randrange(groups)) for _ in range(samples)]
    hits: list[int] = []
    subject = _time_each(
        lambda d: hits.append(
            len(node.query(TxQuery(subject_kind="artifact", subject_id=d, limit=100)))
        ),
        digests,
    )
    latest = TxQuery(type="deploy.finished", limit=TYPE_LIMIT, descending=True)
    type_hits: list[int] = []
    by_type = _time_each(lambda q: type_hits.append(len(node.query(q))), [latest] * samples)
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        scan_subject_sql = _SELECT.format(hint="NOT INDEXED", where=SUBJECT_WHERE, order="ASC")
        scan_type_sql = _SELECT.format(hint="NOT INDEXED", where=TYPE_WHERE, order="DESC")
        subject_scan = _time_each(
            lambda d: conn.execute(scan_subject_sql, ("artifact", d, 100)).fetchall(),
            digests[:scan_repeats],
        )
        type_scan = _time_each(
            lambda t: conn.execute(scan_type_sql, (t, TYPE_LIMIT)).fetchall(),
            ["deploy.finished"] * scan_repeats,
        )
        plans = {}
        for name, where, order, args in (
            ("subject", SUBJECT_WHERE, "ASC", ("artifact", digests[0], 100)),
            ("type", TYPE_WHERE, "DESC", ("deploy.finished", TYPE_LIMIT)),
        ):
            sql = _SELECT.format(hint="", where=where, order=order)
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()
            plans[name] = "; ".join(str(r[-1]) for r in rows)
        tables = _table_bytes(conn)
    finally:
        conn.close()

    return SizeResult(
        size=size,
        build_seconds=build_seconds,
        build_txs=build_txs,
        proof_hashes_mean=sum(lengths) / len(lengths),
        proof_hashes_max=max(lengths),
        proof_gen_us=_us(gen),
        point_read_us=_us(reads),
        proof_verify_us=_us(verify),
        sha_path_us=_us(sha),
        bytes_per_tx=bytes_per_tx,
        checkpoint_busy=busy,
        subject_us=_us(subject),
        subject_scan_us=_us(subject_scan),
        subject_hits=sum(hits) / len(hits),
        type_us=_us(by_type),
        type_scan_us=_us(type_scan),
        type_hits=sum(type_hits) / len(type_hits),
        plans=plans,
        tables=tables,
    )


def grow_and_measure(
    root: Path,
    leaves: Sequence[bytes],
    sizes: Sequence[int],
    *,
    samples: int,
    scan_repeats: int,
    chunk: int = 20_000,
    progress: Callable[[str], None] = print,
) -> tuple[list[SizeResult], Path]:
    """Grow one real ledger through ``node.submit_many`` (big chunks; every signature is
    verified) and measure at each size in ``sizes`` (log sizes, genesis included)."""
    home = fresh_home(root, "growth")
    path = db_path(home)
    node = home.open_node()
    rng = random.Random(20261121)
    results: list[SizeResult] = []
    cursor = 0
    try:
        check_receipts(node.submit_many(registrations(home)), "registration")
        for size in sizes:
            need = size - node.head.log_size
            if need < 0 or cursor + need > len(leaves):
                raise RuntimeError(f"corpus too small to grow the ledger to {size}")

            def grow(lo: int = cursor, hi: int = cursor + need) -> None:
                for start in range(lo, hi, chunk):
                    part = leaves[start : min(start + chunk, hi)]
                    check_receipts(node.submit_many(part, timeout=600), "growth")

            seconds = timed(grow)
            cursor += need
            progress(f"  .. ledger grown to {size:,} txs ({need / seconds:,.0f} tx/s)")
            results.append(
                measure_size(
                    node,
                    path,
                    size,
                    samples=samples,
                    scan_repeats=scan_repeats,
                    rng=rng,
                    build_seconds=seconds,
                    build_txs=need,
                    consumed=cursor,
                )
            )
    finally:
        node.close()
    return results, path


def log2_path(size: int) -> float:
    """Hashes in an audit path of a perfect tree of this size: log2(n)."""
    return math.log2(size)
