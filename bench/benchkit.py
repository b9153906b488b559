"""Support for ``bench/ledger.py``: timing, the report table, machine facts, the signed
transaction corpus, and the raw Ed25519 baselines.

Nothing here asserts on time. Figures are printed beside a baseline measured in the same
run, so a slow or busy machine moves both and the ratio stays meaningful.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsledger.core import (
    PrivateKey,
    PublicKey,
    SignatureChecker,
    Subject,
    Transaction,
    format_ts,
    sign_transaction,
)
from opsledger.core.crypto import DOMAIN_TX

# -- timing ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (``time.perf_counter``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_threads(work: Sequence[Callable[[], object]]) -> float:
    """Start one thread per callable behind a barrier; seconds until all have finished."""
    barrier = threading.Barrier(len(work) + 1)
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], object]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(fn,)) for fn in work]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (Linux ``/proc/stat``; NaN elsewhere)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its reaped children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a live process (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a live process plus its live children (the server's signature
    verifier process is a child), from ``/proc``."""
    total = process_cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            total += process_cpu_seconds(int(stat.parent.name))
    return total


@dataclass
class CpuWatch:
    """How many cores other processes kept busy between ``start`` and ``stop``: machine
    busy time minus our own (this process and reaped children), over wall time."""

    wall: float = 0.0
    busy: float = 0.0
    own: float = 0.0

    @classmethod
    def start(cls) -> CpuWatch:
        return cls(time.perf_counter(), machine_busy_seconds(), own_cpu_seconds())

    def others_cores(self) -> float:
        wall = time.perf_counter() - self.wall
        busy = machine_busy_seconds() - self.busy
        own = own_cpu_seconds() - self.own
        return max(0.0, (busy - own) / wall) if wall > 0 else float("nan")


def others_busy_now(seconds: float = 1.0) -> float:
    """Cores other processes keep busy right now, sampled while we sleep."""
    watch = CpuWatch.start()
    time.sleep(seconds)
    return watch.others_cores()


# -- the report -------------------------------------------------------------------------


@dataclass
class Row:
    """One figure, its same-run baseline, and ``ratio = value / baseline``."""

    section: str
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    if unit in ("x",):
        return f"{value:.2f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Report:
    facts: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(
            f"  .. {row.section} {row.name.strip()}: {fmt(row.value)} {row.unit}",
            file=sys.stderr,
            flush=True,
        )
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        header = ("#", "figure", "value", "unit", "baseline (same run)", "baseline", "ratio")
        table = [header]
        for row in self.rows:
            table.append(
                (
                    row.section,
                    row.name,
                    fmt(row.value),
                    row.unit,
                    row.baseline_name or "-",
                    fmt(row.baseline),
                    "-" if row.ratio is None else f"{row.ratio:.2f}x",
                )
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        right = {2, 5, 6}
        lines: list[str] = []
        for number, line in enumerate(table):
            cells = [
                cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ]
            lines.append("  ".join(cells).rstrip())
            if number == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def facts_text(self) -> str:
        width = max(len(key) for key in self.facts)
        return "\n".join(f"{key.ljust(width)}  {value}" for key, value in self.facts.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "facts": self.facts,
            "rows": [{**asdict(row), "ratio": row.ratio} for row in self.rows],
            "notes": self.notes,
            "extra": self.extra,
        }


# -- machine facts ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    dirty = ""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent,
    )
    if status.stdout.strip():
        dirty = " (+ uncommitted changes)"
    return (out.stdout.strip() or "unknown") + dirty


def machine_facts(mode: str, workdir: Path) -> dict[str, Any]:
    from cryptography.hazmat.backends.openssl import backend

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "mode": mode,
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {affinity} usable by this process",
        "load average at start": f"{loadavg():.2f}",
        "other processes at start": f"{others_busy_now():.2f} cores busy (sampled over 1 s)",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "PyNaCl": f"{_version('pynacl')} (libsodium bundled in the wheel; cffi "
        f"{_version('cffi')} releases the GIL around each C call)",
        "cryptography": f"{_version('cryptography')} ({backend.openssl_version_text()})",
        "SQLite": sqlite3.sqlite_version,
        "opsledger": f"{_version('opsledger')} at git {_git_commit()}",
        "work dir": str(workdir),
    }


# -- the corpus: realistic signed transactions ---------------------------------------------

CI_ACTORS = tuple(f"ci-runner-{i}" for i in range(6))
DEV_ACTORS = ("dev-alice", "dev-bob")
OPS_ACTORS = ("ops-carol", "ops-dan")
ACTORS: tuple[tuple[str, str, str], ...] = (
    *((name, "ci", "service") for name in CI_ACTORS),
    *((name, "developer", "person") for name in DEV_ACTORS),
    *((name, "operator", "person") for name in OPS_ACTORS),
)
"""(name, role, kind): ten writers registered before anything is measured."""

SERVICES = ("shop", "payments", "rpc-gateway", "indexer", "explorer")
SUITES = ("unit", "integration", "e2e")
TX_PER_ARTIFACT = 10
"""Corpus position ``i`` is about artifact ``i // 10``: a build, its test runs, notes."""


def actor_key(name: str) -> PrivateKey:
    """Deterministic bench keys (the seeds are public: never use them outside the bench)."""
    return PrivateKey(hashlib.sha256(b"opsledger-bench-key:" + name.encode()).digest())


def artifact_digest(group: int) -> str:
    return "sha256:" + hashlib.sha256(f"artifact-{group}".encode()).hexdigest()


def commit_id(group: int) -> str:
    return hashlib.sha1(f"commit-{group}".encode(), usedforsecurity=False).hexdigest()


def tx_kind(i: int) -> str:
    """The mix: ~30% build.finished, ~59% test.finished, 10% note, 1% deploy.finished."""
    if i % 100 == 49:
        return "deploy.finished"
    if i % 10 == 9:
        return "note"
    if i % 3 == 0:
        return "build.finished"
    return "test.finished"


def _tx_for(
    i: int, base_nonce: int, base_time: _dt.datetime, ledger: str
) -> tuple[Transaction, str]:
    group = i // TX_PER_ARTIFACT
    digest = artifact_digest(group)
    service = SERVICES[group % len(SERVICES)]
    kind = tx_kind(i)
    subject = Subject("artifact", digest)
    body: dict[str, Any]
    if kind == "build.finished":
        actor = CI_ACTORS[i % len(CI_ACTORS)]
        body = {
            "artifact": f"registry.example.com/{service}",
            "digest": digest,
            "commit": commit_id(group),
            "status": "failure" if i % 97 == 0 else "success",
            "duration_ms": 40_000 + (i * 7919) % 200_000,
            "pipeline": f"{service}/main#{group}",
        }
    elif kind == "test.finished":
        actor = CI_ACTORS[i % len(CI_ACTORS)]
        failed = 1 if i % 89 == 0 else 0
        body = {
            "digest": digest,
            "suite": SUITES[i % len(SUITES)],
            "passed": 100 + i % 400,
            "failed": failed,
            "status": "failure" if failed else "success",
            "duration_ms": 5_000 + (i * 104_729) % 600_000,
        }
    elif kind == "deploy.finished":
        actor = OPS_ACTORS[i % len(OPS_ACTORS)]
        body = {
            "service": service,
            "environment": "prod" if i % 200 == 49 else "staging",
            "version": f"1.{group % 50}.{group % 7}",
            "digest": digest,
            "strategy": "canary",
            "status": "success",
            "commits": [commit_id(group)],
        }
    else:
        actor = (DEV_ACTORS + OPS_ACTORS)[i % 4]
        subject = Subject("service", service)
        body = {"text": f"{service}: reviewed build {group}, rollout window 02:00-03:00 UTC"}
    tx = Transaction(
        type=kind,
        actor=actor,
        key_id=actor_key(actor).key_id,
        ts=format_ts(base_time + _dt.timedelta(milliseconds=i)),
        nonce=base_nonce + i,
        subject=subject,
        body=body,
        ledger=ledger,
    )
    return tx, actor


def make_leaves(
    start: int, stop: int, base_nonce: int, base_time_iso: str, ledger: str
) -> list[bytes]:
    """Signed canonical transactions ``start <= i < stop``: a pure function of ``i``, so
    processes can sign disjoint ranges. Nonces are ``base_nonce + i``: increasing per actor
    in corpus order, whichever process signed them."""
    base_time = _dt.datetime.fromisoformat(base_time_iso)
    keys = {name: actor_key(name) for name, _, _ in ACTORS}
    leaves: list[bytes] = []
    for i in range(start, stop):
        tx, actor = _tx_for(i, base_nonce, base_time, ledger)
        leaves.append(sign_transaction(tx, keys[actor]).leaf)
    return leaves


def actor_of(i: int) -> str:
    kind = tx_kind(i)
    if kind in ("build.finished", "test.finished"):
        return CI_ACTORS[i % len(CI_ACTORS)]
    if kind == "deploy.finished":
        return OPS_ACTORS[i % len(OPS_ACTORS)]
    return (DEV_ACTORS + OPS_ACTORS)[i % 4]


@dataclass
class Corpus:
    leaves: list[bytes]
    seconds: float
    processes: int

    @property
    def mean_leaf_bytes(self) -> float:
        sample = self.leaves[:50_000]
        return sum(map(len, sample)) / len(sample)


def build_corpus(count: int, processes: int, *, ledger: str, chunk: int = 5_000) -> Corpus:
    """Sign ``count`` transactions with ``sign_transaction`` (schema check, canonical
    encoding, Ed25519), spread over processes, for the ledger ``ledger`` (every bench home
    is a copy of one template home, so they all share it). Not part of any measured
    figure."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    base_nonce = int(now.timestamp() * 1_000_000)
    iso = now.isoformat()
    ranges = [(s, min(s + chunk, count)) for s in range(0, count, chunk)]
    start = time.perf_counter()
    leaves: list[bytes] = []
    if processes <= 1 or count <= chunk:
        for lo, hi in ranges:
            leaves.extend(make_leaves(lo, hi, base_nonce, iso, ledger))
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(make_leaves, lo, hi, base_nonce, iso, ledger) for lo, hi in ranges
            ]
            for future in futures:
                leaves.extend(future.result())
    return Corpus(leaves, time.perf_counter() - start, processes)


# -- raw Ed25519 baselines ----------------------------------------------------------------


@dataclass
class RawCrypto:
    """Ed25519 work items of a realistic message size, for both libraries."""

    message_size: int
    count: int
    nacl_items: list[tuple[nacl.signing.VerifyKey, bytes, bytes]] = field(default_factory=list)
    ops_items: list[tuple[PublicKey, bytes, bytes, bytes]] = field(default_factory=list)
    crypto_items: list[tuple[Any, bytes, bytes]] = field(default_factory=list)
    nacl_signers: list[nacl.signing.SigningKey] = field(default_factory=list)
    crypto_signers: list[Ed25519PrivateKey] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    @classmethod
    def make(cls, message_size: int, count: int, keys: int = 8) -> RawCrypto:
        self = cls(message_size, count)
        self.nacl_signers = [nacl.signing.SigningKey.generate() for _ in range(keys)]
        self.crypto_signers = [Ed25519PrivateKey.generate() for _ in range(keys)]
        self.messages = [os.urandom(message_size) for _ in range(count)]
        for i, message in enumerate(self.messages):
            nk = self.nacl_signers[i % keys]
            full = DOMAIN_TX + message
            sig = nk.sign(full).signature
            self.nacl_items.append((nk.verify_key, full, sig))
            self.ops_items.append((PublicKey(bytes(nk.verify_key)), DOMAIN_TX, message, sig))
            ck = self.crypto_signers[i % keys]
            self.crypto_items.append((ck.public_key(), full, ck.sign(full)))
        return self

    def _split(self, threads: int) -> list[range]:
        n = self.count
        return [range(t * n // threads, (t + 1) * n // threads) for t in range(threads)]

    def nacl_verify(self, threads: int) -> float:
        items = self.nacl_items

        def work(part: range) -> Callable[[], None]:
            def run() -> None:
                for i in part:
                    key, message, sig = items[i]
                    key.verify(message, sig)

            return run

        return self.count / run_threads([work(p) for p in self._split(threads)])

    def crypto_verify(self, threads: int) -> float:
        items = self.crypto_items

        def work(part: range) -> Callable[[], None]:
            def run() -> None:
                for i in part:
                    key, message, sig = items[i]
                    key.verify(sig, message)

            return run

        return self.count / run_threads([work(p) for p in self._split(threads)])

    def opsledger_verify(self) -> float:
        """``PublicKey.verify`` as the node calls it (a ``VerifyKey`` per call, domain
        prefix concatenated), one thread."""
        items = self.ops_items

        def run() -> None:
            for key, domain, message, sig in items:
                if not key.verify(domain, message, sig):
                    raise AssertionError("bench signature did not verify")

        return self.count / timed(run)

    def checker_verify(self, checker: SignatureChecker) -> float:
        items = self.ops_items

        def run() -> None:
            if not all(checker.verify_many(items)):
                raise AssertionError("bench signature did not verify")

        return self.count / timed(run)

    def nacl_sign(self) -> float:
        keys = self.nacl_signers
        messages = self.messages

        def run() -> None:
            for i, message in enumerate(messages):
                keys[i % len(keys)].sign(DOMAIN_TX + message)

        return self.count / timed(run)

    def crypto_sign(self) -> float:
        keys = self.crypto_signers
        messages = self.messages

        def run() -> None:
            for i, message in enumerate(messages):
                keys[i % len(keys)].sign(DOMAIN_TX + message)

        return self.count / timed(run)


def fsync_rate(directory: Path, seconds: float = 0.3, repeats: int = 5) -> float:
    """Durable 4 KiB appends per second (write + fsync) in ``directory``: the most commits
    per second a store that fsyncs each commit can make, whatever it does in between.
    Median of ``repeats`` short samples (virtual disks are bursty)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix="fsync-")
    try:
        block = os.urandom(4096)
        rates = []
        for _ in range(repeats):
            count = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                os.write(fd, block)
                os.fsync(fd)
                count += 1
            rates.append(count / (time.perf_counter() - start))
        return median(rates)
    finally:
        os.close(fd)
        os.unlink(name)


def write_json(path: Path, report: Report) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
