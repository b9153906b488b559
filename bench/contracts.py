"""opsledger contract benchmark: release-gate verdicts per second with a realistic ledger of
evidence underneath, and evidence lookup time as the ledger grows. One run prints every
figure beside a baseline measured in the same run, and the ratio; nothing is asserted.

    .venv/bin/python bench/contracts.py            # 10^3, 10^4, 10^5 txs (a few minutes)
    .venv/bin/python bench/contracts.py --quick    # 10^3, 10^4 (about a minute)
    .venv/bin/python bench/contracts.py --full     # adds 10^6 (grows the same ledger)
    .venv/bin/python bench/contracts.py --profile  # cProfile of the verdicts at the top size

See bench/README.md ("Contract benchmark") for what each figure means.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as _dt
import hashlib
import io
import os
import pstats
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import opsledger.contracts.engine as engine_module
from benchkit import (
    CpuWatch,
    Report,
    Row,
    actor_key,
    fsync_rate,
    loadavg,
    machine_facts,
    median,
    timed,
    write_json,
)
from ingest import check_receipts, db_path
from opsledger.app import Home
from opsledger.contracts import Contract, ContractBook, evaluate
from opsledger.contracts._cel import Compiled
from opsledger.core import (
    SignedTransaction,
    Subject,
    Transaction,
    canonical,
    format_ts,
    parse_json,
    sign_transaction,
)
from opsledger.ledger import ContractRunner, LedgerNode, StoreEvidence, load_book
from opsledger.ledger.contracts import evaluate_trigger
from opsledger.store import TxQuery, TxRecord

Item = dict[str, Any]
QueryKey = tuple[str, tuple[str, str] | None, int, int]
"""(tx_type, subject, before_leaf, limit): one ``EvidenceSource.find`` call."""

# -- the actors and the evidence corpus ------------------------------------------------------

DEVELOPER = "dev-alice"  # pushes code (and writes notes)
RELEASER = "dev-bob"  # requests releases; its nonces are counted here, outside the corpus
CI = "ci-runner"
RELEASE_MANAGERS = ("rm-ana", "rm-ben", "rm-cho", "rm-dia")
ACTORS: tuple[tuple[str, str, str], ...] = (
    (DEVELOPER, "developer", "person"),
    (RELEASER, "developer", "person"),
    (CI, "ci", "service"),
    *((name, "release-manager", "person") for name in RELEASE_MANAGERS),
)
SERVICES = ("shop", "payments", "rpc-gateway", "indexer", "explorer")
UNIT = 20
"""Corpus positions per unit. Unit ``g`` holds one release candidate with all the evidence
the release-gate asks for (positions 0-6), then filler evidence for 4 other artifacts
(7-18) and a note (19)."""
FILLERS = 4
AUTHOR_APPROVES = 7  # g % 10 == 7: the first approver also authored a commit
FAILED_TESTS = 5  # g % 13 == 5: the integration suite failed


def candidate_digest(group: int) -> str:
    return "sha256:" + hashlib.sha256(f"release-candidate-{group}".encode()).hexdigest()


def filler_digest(group: int, k: int) -> str:
    return "sha256:" + hashlib.sha256(f"filler-{group}-{k}".encode()).hexdigest()


def commits_of(group: int) -> list[str]:
    return [
        hashlib.sha1(f"commit-{group}-{k}".encode(), usedforsecurity=False).hexdigest()
        for k in range(2)
    ]


def approvers_of(group: int) -> tuple[str, str]:
    n = len(RELEASE_MANAGERS)
    return RELEASE_MANAGERS[group % n], RELEASE_MANAGERS[(group + 1) % n]


def _evidence_tx(i: int, base_nonce: int, base_time: _dt.datetime, ledger: str) -> Transaction:
    """Corpus position ``i``: a pure function of ``i`` so processes can sign ranges."""
    group, slot = divmod(i, UNIT)
    service = SERVICES[group % len(SERVICES)]
    ts = format_ts(base_time + _dt.timedelta(milliseconds=i))
    digest = candidate_digest(group)
    artifact = Subject("artifact", digest)
    commits = commits_of(group)
    body: dict[str, Any]
    if slot == 0:
        author = approvers_of(group)[0] if group % 10 == AUTHOR_APPROVES else DEVELOPER
        actor, kind, subject = DEVELOPER, "code.pushed", Subject("repo", service)
        body = {
            "repo": service,
            "ref": "main",
            "commits": [
                {"id": commits[0], "author": author, "time": ts},
                {"id": commits[1], "author": DEVELOPER, "time": ts},
            ],
        }
    elif slot == 1:
        actor, kind, subject = CI, "build.finished", artifact
        body = {
            "artifact": f"registry.example.com/{service}",
            "digest": digest,
            "commit": commits[-1],
            "status": "success",
            "duration_ms": 40_000 + (i * 7919) % 200_000,
            "pipeline": f"{service}/main#{group}",
        }
    elif slot in (2, 3):
        failed = 2 if slot == 3 and group % 13 == FAILED_TESTS else 0
        actor, kind, subject = CI, "test.finished", artifact
        body = {
            "digest": digest,
            "suite": "unit" if slot == 2 else "integration",
            "passed": 100 + i % 400,
            "failed": failed,
            "status": "failure" if failed else "success",
            "duration_ms": 5_000 + (i * 104_729) % 600_000,
        }
    elif slot == 4:
        actor, kind, subject = CI, "scan.finished", artifact
        body = {
            "digest": digest,
            "scanner": "pip-audit",
            "findings": {"critical": 0, "high": 0, "medium": group % 3, "low": group % 5},
        }
    elif slot in (5, 6):
        actor = approvers_of(group)[slot - 5]
        kind, subject = "approval.granted", artifact
        body = {"digest": digest, "release": f"{service}@1.{group}.0"}
    elif slot < 7 + 3 * FILLERS:
        k, step = divmod(slot - 7, 3)
        other = filler_digest(group, k)
        actor, subject = CI, Subject("artifact", other)
        if step == 0:
            kind = "build.finished"
            body = {
                "artifact": f"registry.example.com/{service}",
                "digest": other,
                "commit": commits[0],
                "status": "success",
                "duration_ms": 40_000 + (i * 7919) % 200_000,
            }
        else:
            kind = "test.finished"
            body = {
                "digest": other,
                "suite": "unit" if step == 1 else "integration",
                "passed": 100 + i % 400,
                "failed": 0,
                "status": "success",
            }
    else:
        actor, kind, subject = DEVELOPER, "note", Subject("service", service)
        body = {"text": f"{service}: release candidate {group} is ready for review"}
    return Transaction(
        type=kind,
        actor=actor,
        key_id=actor_key(actor).key_id,
        ts=ts,
        nonce=base_nonce + i,
        subject=subject,
        body=body,
        ledger=ledger,
    )


def sign_evidence(
    start: int, stop: int, base_nonce: int, base_time_iso: str, ledger: str
) -> list[bytes]:
    """Signed leaves for corpus positions ``start <= i < stop`` (runs in worker processes),
    for the ledger whose checkpoint origin is ``ledger``."""
    base_time = _dt.datetime.fromisoformat(base_time_iso)
    keys = {name: actor_key(name) for name, _, _ in ACTORS}
    out = []
    for i in range(start, stop):
        tx = _evidence_tx(i, base_nonce, base_time, ledger)
        out.append(sign_transaction(tx, keys[tx.actor]).leaf)
    return out


def sign_corpus(
    count: int, ledger: str, processes: int = 2, chunk: int = 10_000
) -> tuple[list[bytes], float]:
    """Sign ``count`` evidence transactions over ``processes`` (not part of any figure)."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    base_nonce, iso = int(now.timestamp() * 1_000_000), now.isoformat()
    ranges = [(lo, min(lo + chunk, count)) for lo in range(0, count, chunk)]
    start = time.perf_counter()
    leaves: list[bytes] = []
    if processes <= 1 or count <= chunk:
        for lo, hi in ranges:
            leaves.extend(sign_evidence(lo, hi, base_nonce, iso, ledger))
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(sign_evidence, lo, hi, base_nonce, iso, ledger) for lo, hi in ranges
            ]
            for future in futures:
                leaves.extend(future.result())
    return leaves, time.perf_counter() - start


class Releaser:
    """Signs ``release.requested`` and filler notes as the releaser, nonces counted here."""

    def __init__(self, ledger: str) -> None:
        self.ledger = ledger
        self.key = actor_key(RELEASER)
        self.nonce = int(time.time() * 1_000_000)

    def _sign(self, kind: str, subject: Subject, body: dict[str, Any]) -> bytes:
        self.nonce += 1
        tx = Transaction(
            type=kind,
            actor=RELEASER,
            key_id=self.key.key_id,
            ts=format_ts(_dt.datetime.now(_dt.UTC)),
            nonce=self.nonce,
            subject=subject,
            body=body,
            ledger=self.ledger,
        )
        return sign_transaction(tx, self.key).leaf

    def request(self, group: int) -> bytes:
        digest = candidate_digest(group)
        return self._sign(
            "release.requested",
            Subject("artifact", digest),
            {
                "service": SERVICES[group % len(SERVICES)],
                "version": f"1.{group}.0",
                "digest": digest,
                "commits": commits_of(group),
            },
        )

    def note(self, n: int) -> bytes:
        return self._sign("note", Subject("service", "shop"), {"text": f"bench note {n}"})


def registrations(home: Home) -> list[SignedTransaction]:
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


# -- evidence sources for the split ------------------------------------------------------------


class RecordingEvidence(StoreEvidence):
    """``StoreEvidence`` that times every ``find`` and keeps what it returned."""

    def __init__(self, store: Any, registry: Any) -> None:
        super().__init__(store, registry)
        self.seconds = 0.0
        self.calls = 0
        self.items = 0
        self.answers: dict[QueryKey, list[Item]] = {}

    def find(
        self, *, tx_type: str, subject: tuple[str, str] | None, before_leaf: int, limit: int
    ) -> list[Item]:
        start = time.perf_counter()
        items = super().find(tx_type=tx_type, subject=subject, before_leaf=before_leaf, limit=limit)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.items += len(items)
        self.answers[(tx_type, subject, before_leaf, limit)] = items
        return items


class ReplayEvidence:
    """An in-memory ``EvidenceSource`` (like tests/contracts/test_engine.py's ``Ledger``):
    answers each query with the items the store returned, so ``engine.evaluate`` over it
    costs CEL, activations and the engine's own Python, and no store and no JSON parsing."""

    def __init__(self, answers: dict[QueryKey, list[Item]]) -> None:
        self.answers = answers

    def find(
        self, *, tx_type: str, subject: tuple[str, str] | None, before_leaf: int, limit: int
    ) -> list[Item]:
        return self.answers[(tx_type, subject, before_leaf, limit)]


def _timing(fn: Callable[..., Any], spent: dict[str, float], key: str) -> Callable[..., Any]:
    def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start

    return timed_call


@contextmanager
def engine_timers() -> Iterator[dict[str, float]]:
    """Time, inside ``engine.evaluate``: building activations (``activation``) and
    ``Compiled.evaluate`` (CEL evaluation and conversion of the result to Python). The
    modules look these names up at call time, so wrapping them in the modules' namespaces
    times every call. Bench-only instrumentation, restored on exit."""
    spent = {"activation": 0.0, "cel": 0.0}
    patches = [
        (vars(engine_module), "activation", "activation"),
    ]
    saved = [namespace[name] for namespace, name, _ in patches]
    cel_evaluate = Compiled.evaluate
    for namespace, name, key in patches:
        namespace[name] = _timing(namespace[name], spent, key)
    Compiled.evaluate = _timing(cel_evaluate, spent, "cel")  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        for (namespace, name, _), original in zip(patches, saved, strict=True):
            namespace[name] = original
        Compiled.evaluate = cel_evaluate  # type: ignore[method-assign]


# -- plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    mode: str
    sizes: tuple[int, ...]
    requests: int  # release requests per size (verdicts measured)
    rounds: int  # passes over the requests for the direct and in-memory rates
    lookup_samples: int  # random subjects per size
    pushes_samples: int
    scan_repeats: int
    scan_repeats_top: int  # at 10^6 a full scan takes seconds: fewer samples
    submit_singles: int  # sequential node.submit baseline


_DEFAULT = Plan(
    mode="default",
    sizes=(1_000, 10_000, 100_000),
    requests=200,
    rounds=2,
    lookup_samples=200,
    pushes_samples=60,
    scan_repeats=7,
    scan_repeats_top=3,
    submit_singles=100,
)
PLANS = {
    "quick": dataclasses.replace(
        _DEFAULT,
        mode="quick",
        sizes=(1_000, 10_000),
        requests=100,
        rounds=1,
        lookup_samples=100,
        pushes_samples=30,
        scan_repeats=5,
        submit_singles=50,
    ),
    "default": _DEFAULT,
    "full": dataclasses.replace(_DEFAULT, mode="full", sizes=(1_000, 10_000, 100_000, 1_000_000)),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def label(size: int) -> str:
    power = len(str(size)) - 1
    return f"10^{power}" if size == 10**power else f"{size:,}"


# -- results --------------------------------------------------------------------------------


@dataclass
class Lookups:
    subject_find_us: float  # StoreEvidence.find, the gate's 4 subject+type queries (pooled)
    subject_sql_us: float  # store.query_txs alone, same queries
    subject_scan_us: float  # same SQL, NOT INDEXED
    subject_hits: float
    pushes_find_us: float  # code.pushed, subject any, limit from the contract (1000)
    pushes_sql_us: float
    pushes_scan_us: float
    pushes_hits: float
    scan_samples: int
    plans: dict[str, str] = field(default_factory=dict)


@dataclass
class Verdicts:
    count: int
    log_size: int  # ledger size when the verdicts were evaluated
    e2e_seconds: float
    direct_rates: list[float]  # verdicts/s per round, evaluate_trigger
    memory_rates: list[float]  # verdicts/s per round, engine.evaluate on ReplayEvidence
    submit_rate: float  # sequential node.submit, 1 tx per call
    finds_us: float  # per verdict, StoreEvidence.find total (SQL + JSON + items)
    finds_calls: float
    finds_items: float
    sql_us: float  # per verdict, the same queries through store.query_txs alone
    activation_us: float  # per verdict, building activations (in-memory pass)
    cel_us: float  # per verdict, Compiled.evaluate (in-memory pass)
    memory_split_us: float  # per verdict, the instrumented in-memory pass
    passed: int
    failed_by: dict[str, int]
    matches: int  # direct verdict bodies equal to the recorded ones
    replay_matches: int
    pushes_found: int  # requests whose pushes evidence held one of their commits

    @property
    def direct_rate(self) -> float:
        return median(self.direct_rates)

    @property
    def memory_rate(self) -> float:
        return median(self.memory_rates)


@dataclass
class SizeResult:
    size: int
    grow_txs: int
    grow_seconds: float
    lookups: Lookups
    verdicts: Verdicts
    others_cores: float


# -- measurements ---------------------------------------------------------------------------

_SELECT = (
    "SELECT tx_id, leaf_index, height, type, actor, subject_kind, subject_id, ts, nonce, leaf "
    "FROM txs {hint} WHERE {where} AND leaf_index < ? ORDER BY leaf_index DESC LIMIT ?"
)
SUBJECT_WHERE = "type = ? AND subject_kind = ? AND subject_id = ?"
TYPE_WHERE = "type = ?"


def _query(tx_type: str, subject: tuple[str, str] | None, before_leaf: int, limit: int) -> TxQuery:
    """The ``TxQuery`` that ``StoreEvidence.find`` sends for these arguments."""
    return TxQuery(
        type=tx_type,
        subject_kind=subject[0] if subject else None,
        subject_id=subject[1] if subject else None,
        after=before_leaf,
        descending=True,
        limit=limit,
    )


def _us(samples: Sequence[float]) -> float:
    return median(samples) * 1e6


def measure_lookups(
    node: LedgerNode,
    db: Path,
    gate: Contract,
    units: int,
    plan: Plan,
    rng: random.Random,
) -> Lookups:
    """StoreEvidence.find as the release-gate calls it, at the head of the ledger."""
    store = node.store
    evidence = StoreEvidence(store, node.registry)
    head = node.head.log_size
    subject_queries = [q for q in gate.evidence if q.subject != "any"]
    pushes = next(q for q in gate.evidence if q.subject == "any")
    groups = [rng.randrange(units) for _ in range(plan.lookup_samples)]
    find_s: list[float] = []
    sql_s: list[float] = []
    hits: list[int] = []
    for group in groups:
        subject = ("artifact", candidate_digest(group))
        for q in subject_queries:
            start = time.perf_counter()
            found = evidence.find(tx_type=q.type, subject=subject, before_leaf=head, limit=q.limit)
            find_s.append(time.perf_counter() - start)
            hits.append(len(found))
            query = _query(q.type, subject, head, q.limit)
            sql_s.append(timed(partial(store.query_txs, query)))
    pushes_find: list[float] = []
    pushes_sql: list[float] = []
    pushes_hits: list[int] = []
    pushes_query = _query(pushes.type, None, head, pushes.limit)
    for _ in range(plan.pushes_samples):
        start = time.perf_counter()
        found = evidence.find(
            tx_type=pushes.type, subject=None, before_leaf=head, limit=pushes.limit
        )
        pushes_find.append(time.perf_counter() - start)
        pushes_hits.append(len(found))
        pushes_sql.append(timed(lambda: store.query_txs(pushes_query)))

    repeats = plan.scan_repeats_top if head >= 1_000_000 else plan.scan_repeats
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    try:
        subject_sql = _SELECT.format(hint="NOT INDEXED", where=SUBJECT_WHERE)
        type_sql = _SELECT.format(hint="NOT INDEXED", where=TYPE_WHERE)
        q0 = subject_queries[0]

        def scan(sql: str, args: tuple[Any, ...]) -> list[Any]:
            return conn.execute(sql, args).fetchall()

        subject_scan = [
            timed(
                partial(
                    scan, subject_sql, (q0.type, "artifact", candidate_digest(g), head, q0.limit)
                )
            )
            for g in groups[:repeats]
        ]
        type_scan = [
            timed(partial(scan, type_sql, (pushes.type, head, pushes.limit)))
            for _ in range(repeats)
        ]
        plans: dict[str, str] = {}
        for name, where, args in (
            ("subject+type", SUBJECT_WHERE, (q0.type, "artifact", "x", head, q0.limit)),
            ("type", TYPE_WHERE, (pushes.type, head, pushes.limit)),
        ):
            sql = "EXPLAIN QUERY PLAN " + _SELECT.format(hint="", where=where)
            plans[name] = "; ".join(str(row[-1]) for row in conn.execute(sql, args))
    finally:
        conn.close()
    return Lookups(
        subject_find_us=_us(find_s),
        subject_sql_us=_us(sql_s),
        subject_scan_us=_us(subject_scan),
        subject_hits=sum(hits) / len(hits),
        pushes_find_us=_us(pushes_find),
        pushes_sql_us=_us(pushes_sql),
        pushes_scan_us=_us(type_scan),
        pushes_hits=sum(pushes_hits) / len(pushes_hits),
        scan_samples=repeats,
        plans=plans,
    )


def book_gate(book: ContractBook) -> Contract:
    deployment = book.in_force("release-gate", sys.maxsize)  # the newest deployment
    if deployment is None:
        raise RuntimeError("release-gate is not deployed")
    return deployment.contract


def runner_of(node: LedgerNode) -> ContractRunner:
    for service in node.services:
        if isinstance(service, ContractRunner):
            return service
    raise RuntimeError("the node has no contract runner")


def recorded_verdicts(node: LedgerNode, after: int) -> dict[str, dict[str, Any]]:
    """Recorded ``contract.verdict`` bodies after leaf ``after``, by trigger tx id."""
    out: dict[str, dict[str, Any]] = {}
    cursor: int | None = after
    while True:
        page = node.store.query_txs(TxQuery(type="contract.verdict", after=cursor, limit=1000))
        for record in page:
            body = parse_json(record.leaf)["body"]
            out[body["trigger"]] = body
        if len(page) < 1000:
            return out
        cursor = page[-1].leaf_index


WARM_UP = 10
"""Verdicts evaluated once, untimed, before each timed pass starts."""


def measure_verdicts(
    home: Home,
    node: LedgerNode,
    releaser: Releaser,
    groups: Sequence[int],
    plan: Plan,
    profile: cProfile.Profile | None,
) -> Verdicts:
    runner = runner_of(node)
    # Baseline for the runner: it records each verdict with one node.submit and waits for
    # its block, so sequential single submits are its floor.
    notes = [releaser.note(n) for n in range(plan.submit_singles)]

    def singles() -> None:
        for leaf in notes:
            node.submit(leaf)

    submit_rate = len(notes) / timed(singles)

    # End to end: commit the requests, the runner evaluates and records every verdict.
    requests = [releaser.request(g) for g in groups]
    first = node.head.log_size
    start = time.perf_counter()
    receipts = node.submit_many(requests, timeout=600)
    check_receipts(receipts, "release requests")
    if not runner.wait_idle(timeout=1200):
        raise RuntimeError("the contract runner did not go idle")
    e2e = time.perf_counter() - start
    recorded = recorded_verdicts(node, first - 1)
    tx_ids = [r.tx_id for r in receipts if not isinstance(r, Exception)]
    missing = [t for t in tx_ids if t not in recorded]
    if missing:
        raise RuntimeError(f"{len(missing)} release requests have no recorded verdict")

    # Direct: evaluate_trigger on a read-only node, for the same stored requests.
    reader = home.open_node(writable=False)
    try:
        store = reader.store
        book = load_book(store)
        records: list[TxRecord] = []
        times: dict[int, str] = {}
        for tx_id in tx_ids:
            record = store.get_tx(tx_id)
            assert record is not None
            records.append(record)
            if record.height not in times:
                block = store.get_block(record.height)
                assert block is not None
                times[record.height] = block.time
        evidence = StoreEvidence(store, reader.registry)

        def direct(part: Sequence[TxRecord] = records) -> list[dict[str, Any]]:
            bodies = []
            for record in part:
                for ev in evaluate_trigger(book, evidence, record, times[record.height]):
                    bodies.append(ev.body)
            return bodies

        direct(records[:WARM_UP])  # the reader's first pages and plans, not timed
        direct_rates = []
        bodies: list[dict[str, Any]] = []
        for _ in range(plan.rounds):
            start = time.perf_counter()
            bodies = direct()
            direct_rates.append(len(records) / (time.perf_counter() - start))
        if profile is not None:
            profile.enable()
            direct()
            profile.disable()
        matches = sum(canonical(body) == canonical(recorded[body["trigger"]]) for body in bodies)

        # The split: finds (timed), then their SQL alone, then the engine on memory.
        recording = RecordingEvidence(store, reader.registry)
        triggers: list[tuple[Contract, Item, str]] = []
        for record in records:
            trigger = recording.item(record)
            now = times[record.height]
            for deployment in book.triggered_by(record.type, record.leaf_index):
                if evaluate(deployment.contract, trigger, source=recording, now=now):
                    triggers.append((deployment.contract, trigger, now))
        queries = [_query(*key) for key in recording.answers]
        sql_seconds = timed(lambda: [store.query_txs(q) for q in queries])
    finally:
        reader.close()
    replay = ReplayEvidence(recording.answers)

    def in_memory(part: Sequence[tuple[Contract, Item, str]] = triggers) -> list[dict[str, Any]]:
        out = []
        for contract, trigger, now in part:
            ev = evaluate(contract, trigger, source=replay, now=now)
            assert ev is not None
            out.append(ev.body)
        return out

    in_memory(triggers[:WARM_UP])
    memory_rates = []
    replayed: list[dict[str, Any]] = []
    for _ in range(plan.rounds):
        start = time.perf_counter()
        replayed = in_memory()
        memory_rates.append(len(triggers) / (time.perf_counter() - start))
    with engine_timers() as spent:
        split_seconds = timed(in_memory)
    replay_matches = sum(
        canonical(body) == canonical(recorded[body["trigger"]]) for body in replayed
    )

    n = len(records)
    failed_by: dict[str, int] = {}
    for body in bodies:
        for requirement in body["requirements"]:
            if requirement["result"] == "fail":
                failed_by[requirement["name"]] = failed_by.get(requirement["name"], 0) + 1
    pushes_found = 0
    pushes = next(q for q in book_gate(book).evidence if q.subject == "any")
    for group, record in zip(groups, records, strict=True):
        key = (pushes.type, None, record.leaf_index + 1, pushes.limit)
        wanted = set(commits_of(group))
        items = recording.answers.get(key, [])
        if any(c["id"] in wanted for item in items for c in item["body"]["commits"]):
            pushes_found += 1
    return Verdicts(
        count=n,
        log_size=first + n,
        e2e_seconds=e2e,
        direct_rates=direct_rates,
        memory_rates=memory_rates,
        submit_rate=submit_rate,
        finds_us=recording.seconds / n * 1e6,
        finds_calls=recording.calls / n,
        finds_items=recording.items / n,
        sql_us=sql_seconds / n * 1e6,
        activation_us=spent["activation"] / n * 1e6,
        cel_us=spent["cel"] / n * 1e6,
        memory_split_us=split_seconds / n * 1e6,
        passed=sum(body["result"] == "pass" for body in bodies),
        failed_by=failed_by,
        matches=matches,
        replay_matches=replay_matches,
        pushes_found=pushes_found,
    )


# -- the run ----------------------------------------------------------------------------------


def run(
    plan: Plan, home: Home, leaves: Sequence[bytes], report: Report, profile: bool
) -> tuple[list[SizeResult], str]:
    db = db_path(home)
    report.extra["block_max_wait_ms"] = home.config().block_max_wait_ms
    report.extra["fsync_per_s"] = fsync_rate(home.path)
    node = home.open_node()
    rng = random.Random(20261121)
    releaser = Releaser(home.ledger_id())
    results: list[SizeResult] = []
    requested: set[int] = set()
    profiler: cProfile.Profile | None = None
    cursor = 0
    try:
        check_receipts(node.submit_many(registrations(home)), "registration")
        gate = book_gate(load_book(node.store))
        for size in plan.sizes:
            watch = CpuWatch.start()
            need = size - node.head.log_size
            if need < 0 or cursor + need > len(leaves):
                raise RuntimeError(f"corpus too small to grow the ledger to {size}")

            def grow(lo: int = cursor, hi: int = cursor + need) -> None:
                for start in range(lo, hi, 20_000):
                    part = leaves[start : min(start + 20_000, hi)]
                    check_receipts(node.submit_many(part, timeout=900), "growth")

            seconds = timed(grow)
            cursor += need
            runner_of(node).wait_idle(timeout=600)
            log(
                f"  .. ledger grown to {size:,} txs in {seconds:.1f} s ({need / seconds:,.0f} tx/s)"
            )
            units = cursor // UNIT  # release candidates whose evidence is all on the ledger
            top = size == plan.sizes[-1]
            lookups = measure_lookups(node, db, gate, units, plan, rng)
            log(
                f"  .. lookups @ {label(size)}: subject {lookups.subject_find_us:.0f} µs, "
                f"pushes {lookups.pushes_find_us:.0f} µs"
            )
            fresh = [g for g in range(units) if g not in requested]
            groups = rng.sample(fresh, min(plan.requests, len(fresh)))
            requested.update(groups)
            if profile and top:
                profiler = cProfile.Profile()
            verdicts = measure_verdicts(home, node, releaser, groups, plan, profiler)
            log(
                f"  .. verdicts @ {label(size)}: direct {verdicts.direct_rate:.0f}/s, "
                f"end to end {verdicts.count / verdicts.e2e_seconds:.0f}/s"
            )
            results.append(SizeResult(size, need, seconds, lookups, verdicts, watch.others_cores()))
    finally:
        node.close()
    text = ""
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        text = out.getvalue()
    return results, text


def add_rows(report: Report, results: Sequence[SizeResult]) -> None:
    for r in results:
        v = r.verdicts
        at = f"@ {label(r.size)}"
        report.add(
            Row(
                "V",
                f"verdicts/s, evaluate_trigger on a read-only node {at}",
                v.direct_rate,
                "v/s",
                "CEL alone: engine.evaluate, in-memory evidence",
                v.memory_rate,
            )
        )
        report.add(
            Row(
                "V",
                f"verdicts/s, end to end through the ContractRunner {at}",
                v.count / v.e2e_seconds,
                "v/s",
                "evaluate_trigger (direct, same requests)",
                v.direct_rate,
            )
        )
        report.add(
            Row(
                "V",
                "  runner's floor: node.submit, 1 tx per call, sequential",
                v.submit_rate,
                "tx/s",
                "fsync/s on this disk (1 commit each)",
                report.extra["fsync_per_s"],
            )
        )
        per_verdict = 1e6 / v.direct_rate
        report.add(
            Row(
                "V",
                f"µs per verdict, evaluate_trigger {at}",
                per_verdict,
                "µs",
                "1 bare indexed store.query_txs by subject",
                r.lookups.subject_sql_us,
            )
        )
        report.add(
            Row(
                "V",
                f"  {v.finds_calls:.0f} evidence finds ({v.finds_items:.0f} items): SQL+JSON",
                v.finds_us,
                "µs",
                "µs per verdict (share)",
                per_verdict,
            )
        )
        report.add(
            Row(
                "V",
                "    of which the SQL (store.query_txs, same queries)",
                v.sql_us,
                "µs",
                "µs per verdict (share)",
                per_verdict,
            )
        )
        report.add(
            Row(
                "V",
                "    of which parsing leaves (parse_json) into items",
                v.finds_us - v.sql_us,
                "µs",
                "µs per verdict (share)",
                per_verdict,
            )
        )
        report.add(
            Row(
                "V",
                "  engine.evaluate on in-memory evidence (CEL alone)",
                1e6 / v.memory_rate,
                "µs",
                "µs per verdict (share)",
                per_verdict,
            )
        )
        report.add(
            Row(
                "V",
                "    of which building activations",
                v.activation_us,
                "µs",
                "µs per verdict (share)",
                per_verdict,
            )
        )
        report.add(
            Row(
                "V",
                "    of which Compiled.evaluate (cel-cpp + to Python)",
                v.cel_us,
                "µs",
                "µs per verdict (share)",
                per_verdict,
            )
        )
    for r in results:
        lk = r.lookups
        capped = f", {lk.scan_samples} scans" if r.size >= 1_000_000 else ""
        report.add(
            Row(
                "L",
                f"find by subject+type @ {label(r.size)} ({lk.subject_hits:.1f} hits{capped})",
                lk.subject_find_us,
                "µs",
                "same SQL, NOT INDEXED (scan)",
                lk.subject_scan_us,
            )
        )
        report.add(
            Row(
                "L",
                "  its SQL alone (store.query_txs)",
                lk.subject_sql_us,
                "µs",
                "same SQL, NOT INDEXED (scan)",
                lk.subject_scan_us,
            )
        )
    for r in results:
        lk = r.lookups
        report.add(
            Row(
                "L",
                f"find code.pushed, any subject, newest 1000 @ {label(r.size)} "
                f"({lk.pushes_hits:.0f} hits)",
                lk.pushes_find_us,
                "µs",
                "same SQL, NOT INDEXED (scan)",
                lk.pushes_scan_us,
            )
        )
        report.add(
            Row(
                "L",
                "  its SQL alone (store.query_txs)",
                lk.pushes_sql_us,
                "µs",
                "same SQL, NOT INDEXED (scan)",
                lk.pushes_scan_us,
            )
        )
    first = results[0]
    for r in results[1:]:
        report.add(
            Row(
                "L",
                f"flat? find by subject+type @ {label(r.size)}",
                r.lookups.subject_find_us,
                "µs",
                f"same @ {label(first.size)}",
                first.lookups.subject_find_us,
            )
        )
        report.add(
            Row(
                "L",
                f"  vs the scan @ {label(r.size)}",
                r.lookups.subject_scan_us,
                "µs",
                f"scan @ {label(first.size)}",
                first.lookups.subject_scan_us,
            )
        )
    for r in results:
        report.add(
            Row(
                "G",
                f"grow to {label(r.size)}: submit_many, 20k chunks ({r.grow_txs:,} txs)",
                r.grow_txs / r.grow_seconds,
                "tx/s",
            )
        )


def add_notes(report: Report, results: Sequence[SizeResult], plan: Plan) -> None:
    for r in results:
        v = r.verdicts
        fails = ", ".join(f"{k} {n}" for k, n in sorted(v.failed_by.items())) or "none"
        report.note(
            f"verdicts @ {label(r.size)}: {v.count} release requests on random release "
            f"candidates, evaluated with the ledger at {v.log_size:,} txs; {v.passed} pass, "
            f"failed requirements: {fails}. Direct bodies equal to the recorded verdicts: "
            f"{v.matches}/{v.count}; in-memory: {v.replay_matches}/{v.count}. The pushes "
            f"query (newest 500 code.pushed on the whole ledger) held the request's commits "
            f"for {v.pushes_found}/{v.count} requests. End to end took {v.e2e_seconds:.1f} s."
        )
    report.note(
        f"the runner records each verdict with one node.submit and waits for its block: a "
        f"lone transaction waits block_max_wait ({report.extra['block_max_wait_ms']:g} ms; "
        f"0 = cut as soon as the committer is free) before its block is cut, then one "
        f"commit; fsync/s on this disk: {report.extra['fsync_per_s']:,.0f}."
    )
    top = results[-1]
    report.note(
        f"query plans @ {label(top.size)}: subject+type: "
        f"{top.lookups.plans.get('subject+type')} | type: {top.lookups.plans.get('type')}"
    )
    if top.size >= 1_000_000:
        report.note(
            f"the NOT INDEXED scans @ {label(top.size)} are capped at "
            f"{plan.scan_repeats_top} samples (each reads the whole table)"
        )
    grown = ", ".join(f"{label(r.size)} in {r.grow_seconds:.0f} s" for r in results)
    report.note(
        "the ledger is real: Home.init (built-in contracts deployed) + open_node, grown by "
        f"node.submit_many of pre-signed txs with every signature verified ({grown}); the "
        "contract runner is on and drops evidence for artifacts without a release request."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="10^3 and 10^4 only")
    mode.add_argument("--full", action="store_true", help="add the 10^6-transaction ledger")
    parser.add_argument("--profile", action="store_true", help="cProfile the top size's verdicts")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--workdir", type=Path, help="where to build the ledger (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the ledger built")
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full" if args.full else "default"]

    started = time.perf_counter()
    whole = CpuWatch.start()
    root = Path(tempfile.mkdtemp(prefix="opsledger-bench-contracts-", dir=args.workdir))
    report = Report(facts=machine_facts(plan.mode, root))
    print(report.facts_text(), flush=True)
    try:
        home = Home(root / "contracts")
        home.init()  # deploys the built-in release-gate and sla
        count = plan.sizes[-1]
        log(f"signing {count:,} evidence transactions (not measured) ...")
        leaves, sign_seconds = sign_corpus(count, home.ledger_id())
        report.facts["corpus"] = (
            f"{count:,} signed txs in units of {UNIT}: a release candidate (code.pushed, "
            f"build.finished, 2 test.finished, scan.finished, 2 approval.granted) + "
            f"build/test filler for {FILLERS} other artifacts + a note; signed in "
            f"{sign_seconds:.1f} s on 2 processes"
        )
        report.facts["actors"] = ", ".join(f"{name} ({role})" for name, role, _ in ACTORS)
        results, profile_text = run(plan, home, leaves, report, args.profile)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    add_rows(report, results)
    add_notes(report, results, plan)
    wall = time.perf_counter() - started
    report.facts["load average at end"] = f"{loadavg():.2f}"
    report.facts["wall time"] = f"{wall:.0f} s"
    print()
    print(report.render())
    print()
    for note in report.notes:
        print(f"* {note}")
    busy = ", ".join(f"{label(r.size)} {r.others_cores:.2f}" for r in results)
    print(
        f"* other processes kept this many of the {os.cpu_count()} cores busy on average: "
        f"{busy}; whole run {whole.others_cores():.2f}. Verdict evaluation is one thread "
        "(the GIL); a busy second core mostly slows the store's commits."
    )
    print(
        f"* load average {report.facts['load average at start']} at start, "
        f"{report.facts['load average at end']} at end; wall time {wall:.0f} s"
    )
    if profile_text:
        print()
        print(f"cProfile of evaluate_trigger @ {label(results[-1].size)}:")
        print(profile_text)
    if args.json:
        report.extra["results"] = [dataclasses.asdict(r) for r in results]
        write_json(args.json, report)
        print(f"* figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
