"""Fixtures for the store contract: one suite, run against every backend.

Stores never parse what they hold, so the blocks here are fake but *consistent*: heights
and leaf indexes are contiguous, ``tx_id`` is the SHA-256 of the leaf, tree nodes are the
real perfect-subtree hashes of the leaves (RFC 9162 style), and nonces grow per actor.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import os
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsledger.store import BlockRecord, LedgerStore, NodeId, PostgresStore, SqliteStore, TxRecord

PG_DSN = os.environ.get("OPSLEDGER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

TYPES = (
    "build.started",
    "build.finished",
    "build.step.done",
    "build",  # not matched by "build.*"
    "buildx.other",  # nor this
    "build-x.y",  # '-' sorts before '.': just below the range
    "build/z",  # '/' is the range's exclusive upper bound
    "deploy.promoted",
    "incident.opened",
)
ACTORS = ("alice", "bob", "carol")
SUBJECTS = (("service", "api"), ("service", "web"), ("artifact", "api"), ("host", "db-1"))
BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def fmt_ts(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ts_for_leaf(leaf_index: int) -> str:
    """Two leaves per second, so time ranges have ties at their bounds."""
    return fmt_ts(BASE_TIME + dt.timedelta(seconds=leaf_index // 2))


@dataclass(frozen=True)
class TxSpec:
    """What a test may choose about a transaction; the builder fills in the rest."""

    type: str | None = None
    actor: str | None = None
    subject_kind: str | None = None
    subject_id: str | None = None
    nonce: int | None = None
    leaf: bytes | None = None


@dataclass(frozen=True)
class Batch:
    """Everything one ``append_block`` call takes."""

    block: BlockRecord
    txs: list[TxRecord]
    nodes: list[tuple[int, int, bytes]]
    nonces: dict[str, int]

    def args(
        self,
    ) -> tuple[BlockRecord, list[TxRecord], list[tuple[int, int, bytes]], dict[str, int]]:
        return self.block, self.txs, self.nodes, self.nonces

    def replace_block(self, **changes: Any) -> Batch:
        return dataclasses.replace(self, block=dataclasses.replace(self.block, **changes))


@dataclass
class ChainBuilder:
    """Builds consecutive consistent batches. ``build`` does not advance; ``accept`` does,
    so a test can derive a bad batch from a good one and still append the good one."""

    seed: int = 0
    height: int = 0
    size: int = 0
    hashes: dict[NodeId, bytes] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    blocks: list[BlockRecord] = field(default_factory=list)
    txs: list[TxRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def build(self, n: int = 3, specs: Sequence[TxSpec] | None = None) -> Batch:
        specs = list(specs) if specs is not None else [TxSpec() for _ in range(n)]
        rng = self.rng
        nonces = dict(self.nonces)
        block_nonces: dict[str, int] = {}
        txs: list[TxRecord] = []
        for offset, spec in enumerate(specs):
            leaf_index = self.size + offset
            kind, sid = (
                (spec.subject_kind, spec.subject_id)
                if spec.subject_kind is not None and spec.subject_id is not None
                else rng.choice(SUBJECTS)
            )
            actor = spec.actor if spec.actor is not None else rng.choice(ACTORS)
            nonce = spec.nonce if spec.nonce is not None else nonces.get(actor, 0) + 1
            nonces[actor] = max(nonces.get(actor, nonce), nonce)
            block_nonces[actor] = max(block_nonces.get(actor, nonce), nonce)
            # The leaf index suffix keeps leaves (hence tx ids) unique whatever the spec.
            leaf = (
                spec.leaf if spec.leaf is not None else rng.randbytes(rng.randint(16, 200))
            ) + leaf_index.to_bytes(8, "big")
            txs.append(
                TxRecord(
                    tx_id=hashlib.sha256(leaf).hexdigest(),
                    leaf_index=leaf_index,
                    height=self.height,
                    type=spec.type if spec.type is not None else rng.choice(TYPES),
                    actor=actor,
                    subject_kind=kind,
                    subject_id=sid,
                    ts=ts_for_leaf(leaf_index),
                    nonce=nonce,
                    leaf=leaf,
                )
            )
        new_size = self.size + len(txs)
        nodes = self._new_nodes(txs, new_size)
        root = hashlib.sha256(b"".join(h for _, _, h in nodes) + new_size.to_bytes(8, "big"))
        data = rng.randbytes(48) + self.height.to_bytes(8, "big")
        block = BlockRecord(
            height=self.height,
            block_hash=hashlib.sha256(data).hexdigest(),
            log_size=new_size,
            log_root=root.hexdigest(),
            time=ts_for_leaf(max(new_size - 1, 0)),
            data=data,
            checkpoint=(
                f"opsledger.test/log\n{new_size}\n{base64.b64encode(root.digest()).decode()}\n"
                f"\n— test-node fakesig{self.height}\n"
            ),
        )
        return Batch(block, txs, nodes, block_nonces)

    def _new_nodes(self, txs: Sequence[TxRecord], new_size: int) -> list[tuple[int, int, bytes]]:
        """Perfect-subtree nodes completed by this batch, leaves first."""
        local: dict[NodeId, bytes] = {}
        out: list[tuple[int, int, bytes]] = []
        for tx in txs:
            h = hashlib.sha256(b"\x00" + tx.leaf).digest()
            local[(0, tx.leaf_index)] = h
            out.append((0, tx.leaf_index, h))
        level = 1
        while (1 << level) <= new_size:
            for idx in range(self.size >> level, new_size >> level):
                left = local.get((level - 1, 2 * idx)) or self.hashes[(level - 1, 2 * idx)]
                right = local.get((level - 1, 2 * idx + 1)) or self.hashes[(level - 1, 2 * idx + 1)]
                h = hashlib.sha256(b"\x01" + left + right).digest()
                local[(level, idx)] = h
                out.append((level, idx, h))
            level += 1
        return out

    def accept(self, batch: Batch) -> None:
        self.blocks.append(batch.block)
        self.txs.extend(batch.txs)
        for level, idx, h in batch.nodes:
            self.hashes[(level, idx)] = h
        for actor, nonce in batch.nonces.items():
            self.nonces[actor] = max(self.nonces.get(actor, nonce), nonce)
        self.height += 1
        self.size = batch.block.log_size

    def extend(
        self, store: LedgerStore, n: int = 3, specs: Sequence[TxSpec] | None = None
    ) -> Batch:
        batch = self.build(n, specs)
        store.append_block(*batch.args())
        self.accept(batch)
        return batch


_pg_reachable: bool | None = None


def require_postgres() -> None:
    """Fail when the test server is not there: markers select tests (``-m "not postgres"``),
    they never skip silently, so a missing service cannot hide as a green run."""
    global _pg_reachable  # noqa: PLW0603 - probed once per session
    if _pg_reachable is None:
        try:
            with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_reachable = True
        except psycopg.OperationalError:
            _pg_reachable = False
    if not _pg_reachable:
        pytest.fail(f"PostgreSQL not reachable at {PG_DSN} (deselect with -m 'not postgres')")


StoreFactory = Callable[[], LedgerStore]

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres":
        require_postgres()
    return name


@pytest.fixture
def store_factory(backend: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes fresh, initialised stores (own file or own schema) and removes them after."""
    made: list[LedgerStore] = []
    schemas: list[str] = []

    def make() -> LedgerStore:
        store: LedgerStore
        if backend == "sqlite":
            store = SqliteStore(tmp_path / f"{uuid.uuid4().hex}.db")
        else:
            schema = f"t_{uuid.uuid4().hex}"
            schemas.append(schema)
            store = PostgresStore(PG_DSN, schema=schema)
        made.append(store)
        store.initialize()
        return store

    yield make
    for store in made:
        store.close()
    for schema in schemas:
        # A fresh handle: the test may have closed (or broken) its own.
        cleaner = PostgresStore(PG_DSN, schema=schema)
        try:
            cleaner.drop()
        finally:
            cleaner.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> LedgerStore:
    return store_factory()


@pytest.fixture
def chain() -> ChainBuilder:
    return ChainBuilder(seed=1)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A unique schema name for tests that open PostgreSQL stores themselves; dropped after."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex}"
    yield schema
    cleaner = PostgresStore(PG_DSN, schema=schema)
    try:
        cleaner.drop()
    finally:
        cleaner.close()
