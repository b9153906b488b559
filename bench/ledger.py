"""opsledger ledger benchmark: one run prints every figure beside a baseline measured in
the same run, and the ratio between them. No figure is asserted; this only measures.

    .venv/bin/python bench/ledger.py            # default, a few minutes on 2 cores
    .venv/bin/python bench/ledger.py --quick    # ~1 minute smoke run (CI)
    .venv/bin/python bench/ledger.py --full     # adds the 10^6-transaction ledger
    .venv/bin/python bench/ledger.py --json out.json --profile

See bench/README.md for what each figure means and why its baseline is the right one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchkit import (
    Corpus,
    CpuWatch,
    RawCrypto,
    Report,
    Row,
    build_corpus,
    fsync_rate,
    loadavg,
    machine_facts,
    median,
    timed,
    write_json,
)
from growth import grow_and_measure, log2_path
from ingest import (
    breakdown,
    db_path,
    ingest_many,
    ingest_singles,
    template_home,
    verifier_cpu_seconds,
)
from opsledger.core import (
    SignatureChecker,
    SignedTransaction,
    ThreadedSignatureChecker,
    VerifyResult,
)
from opsledger.ledger import verify_store
from opsledger.ledger.sigpool import ProcessSignatureChecker
from opsledger.store import open_store


@dataclass(frozen=True)
class Plan:
    """How much work each mode does."""

    mode: str
    corpus: int
    raw_count: int
    raw_repeats: int
    breakdown_txs: int
    ingest_txs: int
    ingest_chunk: int
    variant_txs: int
    single_threads: int
    single_per_thread: int
    http_batch_txs: int
    http_chunk: int
    http_per_thread: int
    sizes: tuple[int, ...]
    proof_samples: int
    scan_repeats: int
    verify_growth: bool


_DEFAULT = Plan(
    mode="default",
    corpus=100_000,
    raw_count=3_000,
    raw_repeats=5,
    breakdown_txs=5_000,
    ingest_txs=50_000,
    ingest_chunk=2_000,
    variant_txs=10_000,
    single_threads=8,
    single_per_thread=250,
    http_batch_txs=10_000,
    http_chunk=1_000,
    http_per_thread=100,
    sizes=(1_000, 10_000, 100_000),
    proof_samples=200,
    scan_repeats=9,
    verify_growth=False,
)
PLANS = {
    "quick": dataclasses.replace(
        _DEFAULT,
        mode="quick",
        corpus=12_000,
        raw_count=1_000,
        raw_repeats=3,
        breakdown_txs=2_000,
        ingest_txs=8_000,
        variant_txs=4_000,
        single_per_thread=60,
        http_batch_txs=4_000,
        http_per_thread=30,
        sizes=(1_000, 10_000),
        proof_samples=100,
        scan_repeats=5,
    ),
    "default": _DEFAULT,
    "full": dataclasses.replace(
        _DEFAULT,
        mode="full",
        corpus=1_000_000,
        sizes=(1_000, 10_000, 100_000, 1_000_000),
        verify_growth=True,
    ),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sample_verify_baseline(raw: RawCrypto, repeats: int = 3) -> float:
    """PyNaCl verify on 2 threads, re-measured right before a section so the baseline saw
    the same machine load as the figure beside it."""
    return median([raw.nacl_verify(2) for _ in range(repeats)])


def section_raw(report: Report, raw: RawCrypto, plan: Plan) -> float:
    log("[1] raw Ed25519 rates")
    reps = plan.raw_repeats
    checker = ThreadedSignatureChecker(2)
    process_checker = ProcessSignatureChecker()
    raw.checker_verify(process_checker)  # start the shared worker before timing it
    runs: dict[str, list[float]] = {}
    measures: dict[str, Callable[[], float]] = {
        "nacl_verify_1": lambda: raw.nacl_verify(1),
        "nacl_verify_2": lambda: raw.nacl_verify(2),
        "crypto_verify_1": lambda: raw.crypto_verify(1),
        "crypto_verify_2": lambda: raw.crypto_verify(2),
        "opsledger_verify_1": raw.opsledger_verify,
        "checker_2": lambda: raw.checker_verify(checker),
        "process_checker": lambda: raw.checker_verify(process_checker),
        "nacl_sign_1": raw.nacl_sign,
        "crypto_sign_1": raw.crypto_sign,
    }
    cpu: list[float] = []
    try:
        # Interleaved rounds: every variant sees the same stretch of machine load.
        for _ in range(reps):
            for name, measure in measures.items():
                start = time.process_time()
                runs.setdefault(name, []).append(measure())
                if name == "nacl_verify_1":
                    cpu.append((time.process_time() - start) / raw.count)
    finally:
        checker.close()
    figures = {name: median(values) for name, values in runs.items()}
    nacl1, nacl2 = figures["nacl_verify_1"], figures["nacl_verify_2"]
    crypto1, crypto2 = figures["crypto_verify_1"], figures["crypto_verify_2"]
    ops1, checked = figures["opsledger_verify_1"], figures["checker_2"]
    in_process = figures["process_checker"]
    nsign, csign = figures["nacl_sign_1"], figures["crypto_sign_1"]
    cpu_per_verify = median(cpu) * 1e6
    base = "PyNaCl verify, 1 thread"
    size = f"{raw.message_size} B msg"
    report.add(Row("1", f"PyNaCl verify, 1 thread ({size})", nacl1, "sig/s"))
    report.add(Row("1", "PyNaCl verify, 2 threads", nacl2, "sig/s", base, nacl1))
    report.add(Row("1", "cryptography verify, 1 thread", crypto1, "sig/s", base, nacl1))
    report.add(Row("1", "cryptography verify, 2 threads", crypto2, "sig/s", base, nacl1))
    report.add(Row("1", "opsledger PublicKey.verify, 1 thread", ops1, "sig/s", base, nacl1))
    report.add(
        Row(
            "1",
            "opsledger ThreadedSignatureChecker(2)",
            checked,
            "sig/s",
            "PyNaCl verify, 2 threads",
            nacl2,
        )
    )
    report.add(
        Row(
            "1",
            "opsledger ProcessSignatureChecker (ingest)",
            in_process,
            "sig/s",
            "PyNaCl verify, 1 thread",
            nacl1,
        )
    )
    report.add(Row("1", "PyNaCl sign, 1 thread", nsign, "sig/s", base, nacl1))
    report.add(
        Row("1", "cryptography sign, 1 thread", csign, "sig/s", "PyNaCl sign, 1 thread", nsign)
    )
    report.add(Row("1", "PyNaCl verify, CPU per signature", cpu_per_verify, "µs"))
    report.extra["raw_cpu_us_per_verify"] = cpu_per_verify
    report.extra["raw_runs"] = runs
    report.extra["raw"] = {
        "nacl_verify_1": nacl1,
        "nacl_verify_2": nacl2,
        "crypto_verify_1": crypto1,
        "crypto_verify_2": crypto2,
        "opsledger_verify_1": ops1,
        "checker_2": checked,
        "process_checker": in_process,
        "nacl_sign_1": nsign,
        "crypto_sign_1": csign,
    }
    return nacl2


def section_ingest(
    report: Report, raw: RawCrypto, corpus: Corpus, plan: Plan, root: Path, profile: bool
) -> Path:
    log("[2] in-process ingest")
    leaves = corpus.leaves
    bd = breakdown(root, leaves[: plan.breakdown_txs], repeats=3, profile=profile)
    report.extra["breakdown"] = bd.to_json()
    report.extra["breakdown_text"] = bd.render()
    if bd.profile:
        report.extra["profile_text"] = bd.profile
    raw1 = median([raw.nacl_verify(1) for _ in range(3)])
    report.add(
        Row(
            "2",
            "ingest, all on 1 thread (inline commit)",
            1e6 / bd.wall_us,
            "tx/s",
            "PyNaCl verify, 1 thread",
            raw1,
        )
    )
    report.add(
        Row(
            "2",
            "  CPU per tx",
            bd.total_us,
            "µs",
            "PyNaCl verify, CPU per signature",
            report.extra["raw_cpu_us_per_verify"],
        )
    )

    base2 = sample_verify_baseline(raw)
    cpu_verify = report.extra["raw_cpu_us_per_verify"]
    main = ingest_many(root, "ingest", leaves[: plan.ingest_txs], chunk=plan.ingest_chunk)
    report.add(
        Row(
            "2",
            f"submit_many bytes, chunks of {plan.ingest_chunk:,}",
            main.rate,
            "tx/s",
            "PyNaCl verify, 2 threads",
            base2,
        )
    )
    report.add(
        Row(
            "2",
            "  CPU per tx, node + verifier process",
            main.cpu_us_per_tx,
            "µs",
            "PyNaCl verify, CPU per signature",
            cpu_verify,
        )
    )
    bare = ingest_many(
        root,
        "ingest-no-contracts",
        leaves[: plan.variant_txs],
        chunk=plan.ingest_chunk,
        contracts=False,
    )
    report.add(
        Row(
            "2",
            "submit_many bytes, home without built-in contracts",
            bare.rate,
            "tx/s",
            "PyNaCl verify, 2 threads",
            base2,
        )
    )
    report.add(
        Row(
            "2",
            "  CPU per tx, node + verifier process",
            bare.cpu_us_per_tx,
            "µs",
            "PyNaCl verify, CPU per signature",
            cpu_verify,
        )
    )
    stx = [SignedTransaction.parse(leaf) for leaf in leaves[: plan.variant_txs]]
    objs = ingest_many(root, "ingest-objects", stx, chunk=plan.ingest_chunk)
    report.add(
        Row(
            "2",
            "submit_many parsed objects (LocalClient)",
            objs.rate,
            "tx/s",
            "PyNaCl verify, 2 threads",
            base2,
        )
    )
    report.add(
        Row(
            "2",
            "  CPU per tx, node + verifier process",
            objs.cpu_us_per_tx,
            "µs",
            "PyNaCl verify, CPU per signature",
            cpu_verify,
        )
    )
    two = ingest_many(
        root, "ingest-2callers", leaves[: plan.variant_txs], chunk=plan.ingest_chunk, callers=2
    )
    report.add(
        Row(
            "2",
            "submit_many bytes, 2 caller threads",
            two.rate,
            "tx/s",
            "PyNaCl verify, 2 threads",
            base2,
        )
    )
    fsyncs = fsync_rate(root)
    single = ingest_singles(
        root,
        "ingest-single",
        leaves,
        threads=plan.single_threads,
        per_thread=plan.single_per_thread,
    )
    report.add(
        Row(
            "2",
            f"submit, 1 tx per call, {plan.single_threads} threads",
            single.rate,
            "tx/s",
            "fsync/s on this disk (1 commit each)",
            fsyncs,
        )
    )
    report.add(
        Row("2", "  mean txs per block (group commit)", single.txs / single.blocks, "tx", "", None)
    )
    store_share = main.store_seconds / main.seconds
    ceiling = 2e6 / main.cpu_us_per_tx
    report.note(
        f"ingest (2): {main.txs:,} txs from 10 actors in {main.blocks} blocks, "
        f"{main.seconds:.1f} s; store.append_block took {store_share:.0%} of the wall time. "
        f"Target >= 10,000 tx/s with every signature verified: "
        f"{'met' if main.rate >= 10_000 else 'NOT met'} ({main.rate:,.0f} tx/s). At "
        f"{main.cpu_us_per_tx:.0f} µs of CPU per tx, even two idle cores and no GIL would "
        f"cap it at {ceiling:,.0f} tx/s."
    )
    report.extra["ingest"] = {r.label: r.to_json() for r in (main, bare, objs, two, single)}
    report.note(
        "contracts (2): the built-in release-gate contract is triggered by every "
        "build.finished/test.finished; its runner works beside the commit path and was "
        f"still busy {main.drain_seconds:.1f} s after the last receipt of the main run. "
        f"CPU per tx with contracts {main.cpu_us_per_tx:.0f} µs, without "
        f"{bare.cpu_us_per_tx:.0f} µs."
    )
    report.extra["fsync_per_s"] = fsyncs
    return db_path(main.home)


def verify_rows(report: Report, raw: RawCrypto, db: Path) -> float:
    """verify_store over one ledger as ``opsledger verify`` runs it (the verifier process,
    blocks pipelined), then with ``ThreadedSignatureChecker(2)`` for comparison; returns
    the seconds of the first."""
    base2 = sample_verify_baseline(raw)
    store = open_store(f"sqlite:///{db}")
    threaded = ThreadedSignatureChecker(2)
    timings: dict[str, tuple[float, float]] = {}
    try:
        holder: list[VerifyResult] = []
        checkers: list[tuple[str, SignatureChecker]] = [
            ("verifier process", ProcessSignatureChecker()),
            ("2 threads", threaded),
        ]
        for label, checker in checkers:

            def run(c: SignatureChecker = checker) -> None:
                holder.append(verify_store(store, checker=c))

            cpu = time.process_time() + verifier_cpu_seconds()
            seconds = timed(run)
            cpu = time.process_time() + verifier_cpu_seconds() - cpu
            timings[label] = (seconds, cpu)
    finally:
        threaded.close()
        store.close()
    n = holder[0].transactions
    for label, (seconds, cpu) in timings.items():
        report.add(
            Row(
                "4",
                f"verify_store, {n:,} txs, {label}",
                n / seconds,
                "tx/s",
                "PyNaCl verify, 2 threads",
                base2,
            )
        )
        report.add(
            Row(
                "4",
                "  CPU per tx, all processes",
                cpu / n * 1e6,
                "µs",
                "PyNaCl verify, CPU per signature",
                report.extra["raw_cpu_us_per_verify"],
            )
        )
        report.extra.setdefault("verify", []).append(
            {"checker": label, "transactions": n, "seconds": seconds, "cpu_seconds": cpu}
        )
    return timings["verifier process"][0]


def section_verify(report: Report, raw: RawCrypto, db: Path) -> None:
    log("[4] verify")
    verify_rows(report, raw, db)


def section_http(
    report: Report, raw: RawCrypto, corpus: Corpus, plan: Plan, root: Path, inprocess: float
) -> None:
    log("[3] HTTP ingest")
    try:
        from http_ingest import http_ingest
    except ImportError as exc:
        report.note(f"HTTP ingest (3) skipped: {exc}")
        return
    base2 = sample_verify_baseline(raw)
    fsyncs = fsync_rate(root)
    try:
        result = http_ingest(
            root,
            corpus.leaves,
            batch_txs=plan.http_batch_txs,
            batch_chunk=plan.http_chunk,
            threads=plan.single_threads,
            per_thread=plan.http_per_thread,
        )
    except Exception as exc:
        report.note(f"HTTP ingest (3) failed: {exc!r}")
        log(f"  !! HTTP ingest failed: {exc!r}")
        return
    batch_rate = result.batch_txs / result.batch_seconds
    report.add(
        Row(
            "3",
            f"HTTP batch POST, {plan.http_chunk:,} per request",
            batch_rate,
            "tx/s",
            "PyNaCl verify, 2 threads",
            base2,
        )
    )
    inline_us = report.extra["breakdown"]["total_cpu_us_per_tx"]
    report.add(
        Row(
            "3",
            "  server CPU per tx, batch",
            result.batch_server_cpu / result.batch_txs * 1e6,
            "µs",
            "in-process CPU per tx (1 thread)",
            inline_us,
        )
    )
    report.add(
        Row(
            "3",
            f"HTTP single POSTs, {plan.single_threads} threads",
            result.single_txs / result.single_seconds,
            "tx/s",
            "fsync/s on this disk (1 commit each)",
            fsyncs,
        )
    )
    report.add(
        Row(
            "3",
            "  server CPU per tx, single POST",
            result.single_server_cpu / result.single_txs * 1e6,
            "µs",
            "in-process CPU per tx (1 thread)",
            inline_us,
        )
    )
    report.note(
        f"HTTP (3): batch endpoint {result.batch_path}; the batch rate is "
        f"{batch_rate / inprocess:.0%} of in-process submit_many of bytes. The server runs "
        "in its own process on the same cores as the httpx client (whose CPU per request"
        " is comparable to the server's, so client and server compete for the cores)."
    )
    report.extra["http"] = result.to_json()


def section_growth(report: Report, corpus: Corpus, plan: Plan, root: Path, raw: RawCrypto) -> None:
    log("[5-7] growing one ledger: proofs, storage, lookups")
    results, path = grow_and_measure(
        root,
        corpus.leaves,
        plan.sizes,
        samples=plan.proof_samples,
        scan_repeats=plan.scan_repeats,
        progress=log,
    )
    leaf = corpus.mean_leaf_bytes

    def label(size: int) -> str:
        power = len(str(size)) - 1
        return f"10^{power}" if size == 10**power else f"{size:,}"

    for r in results:
        report.add(
            Row(
                "5",
                f"proof @ {label(r.size)}: hashes (max {r.proof_hashes_max})",
                r.proof_hashes_mean,
                "hashes",
                "log2(n)",
                log2_path(r.size),
            )
        )
    for r in results:
        report.add(
            Row(
                "5",
                f"proof @ {label(r.size)}: size",
                r.proof_hashes_mean * 32,
                "bytes",
                "one transaction leaf (mean)",
                leaf,
            )
        )
    for r in results:
        report.add(
            Row(
                "5",
                f"proof @ {label(r.size)}: node.inclusion_proof",
                r.proof_gen_us,
                "µs",
                "node.get_tx (1 indexed read)",
                r.point_read_us,
            )
        )
    for r in results:
        report.add(
            Row(
                "5",
                f"proof @ {label(r.size)}: verify_inclusion",
                r.proof_verify_us,
                "µs",
                "bare SHA-256 chain, same length",
                r.sha_path_us,
            )
        )
    for r in results:
        report.add(
            Row(
                "6",
                f"bytes stored per tx @ {label(r.size)}",
                r.bytes_per_tx,
                "B",
                "canonical leaf (mean)",
                leaf,
            )
        )
    biggest = results[-1]
    per_tx = {name: size / biggest.size for name, size in biggest.tables.items()}
    groups = {
        "txs table (leaf + columns)": ["txs"],
        "tx_key index (tx id lookups)": ["txs_key"],
        "4 query indexes (type/actor/subject/ts)": [
            "txs_type",
            "txs_actor",
            "txs_subject",
            "txs_ts",
        ],
        "Merkle tree nodes": ["nodes"],
        "blocks + checkpoints": ["blocks", *[n for n in per_tx if "autoindex_blocks" in n]],
    }
    for name, members in groups.items():
        report.add(
            Row(
                "6",
                f"  @ {label(biggest.size)}: {name}",
                sum(per_tx.get(m, 0.0) for m in members),
                "B",
                "canonical leaf (mean)",
                leaf,
            )
        )
    for r in results:
        report.add(
            Row(
                "7",
                f"lookup by subject @ {label(r.size)} ({r.subject_hits:.0f} hits)",
                r.subject_us,
                "µs",
                "same SQL, NOT INDEXED (scan)",
                r.subject_scan_us,
            )
        )
    for r in results:
        report.add(
            Row(
                "7",
                f"lookup latest deploys by type @ {label(r.size)} ({r.type_hits:.0f} hits)",
                r.type_us,
                "µs",
                "NOT INDEXED (scan back to 10th hit)",
                r.type_scan_us,
            )
        )
    for r in results:
        report.add(
            Row(
                "2",
                f"submit_many 20k chunks, ledger growing to {label(r.size)}",
                r.build_txs / r.build_seconds,
                "tx/s",
                "",
                None,
            )
        )
    report.note(
        "proofs/storage/lookups (5-7): one real ledger grown through node.submit_many "
        "(every signature verified), measured at each size; proofs are against the "
        "head checkpoint, medians over random leaves."
    )
    report.note(
        f"query plans @ {label(biggest.size)}: subject: {biggest.plans.get('subject')} | "
        f"type: {biggest.plans.get('type')}"
    )
    if any(r.checkpoint_busy for r in results):
        report.note("a WAL checkpoint was busy: some bytes/tx figures include WAL pages")
    report.extra["growth"] = [r.to_json() for r in results]
    if plan.verify_growth:
        log("[4] verify the largest ledger")
        seconds = verify_rows(report, raw, path)
        report.note(
            f"verify of the {biggest.size:,}-tx ledger took {seconds:.0f} s (target: under 120 s)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    mode.add_argument("--full", action="store_true", help="add the 10^6-transaction ledger")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of the single-thread ingest path"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to build ledgers (default: a temp dir, removed afterwards)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the ledgers built")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP figures")
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full" if args.full else "default"]

    started = time.perf_counter()
    whole = CpuWatch.start()
    others: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix="opsledger-bench-", dir=args.workdir))
    report = Report(facts=machine_facts(plan.mode, root))
    print(report.facts_text(), flush=True)
    try:
        log(f"signing a corpus of {plan.corpus:,} transactions (not measured) ...")
        ledger_id = template_home(root).ledger_id()
        corpus = build_corpus(plan.corpus, processes=2, ledger=ledger_id)
        report.facts["corpus"] = (
            f"{plan.corpus:,} signed txs (build.finished/test.finished/note/deploy.finished "
            f"from 10 actors), mean leaf {corpus.mean_leaf_bytes:.0f} B, signed in "
            f"{corpus.seconds:.1f} s on {corpus.processes} processes"
        )
        sample = SignedTransaction.parse(corpus.leaves[0])
        raw = RawCrypto.make(len(sample.tx.signing_bytes()), plan.raw_count)
        watch = CpuWatch.start()
        section_raw(report, raw, plan)
        others["raw crypto"] = watch.others_cores()
        watch = CpuWatch.start()
        ingest_db = section_ingest(report, raw, corpus, plan, root, args.profile)
        others["ingest"] = watch.others_cores()
        inprocess = report.extra["ingest"]["ingest"]["tx_per_s"]
        if not args.no_http:
            section_http(report, raw, corpus, plan, root, inprocess)
        watch = CpuWatch.start()
        section_verify(report, raw, ingest_db)
        others["verify"] = watch.others_cores()
        watch = CpuWatch.start()
        section_growth(report, corpus, plan, root, raw)
        others["growth"] = watch.others_cores()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - started
    report.facts["load average at end"] = f"{loadavg():.2f}"
    others["whole run"] = whole.others_cores()
    report.extra["other_processes_cores"] = others
    report.facts["wall time"] = f"{wall:.0f} s"
    report.rows.sort(key=lambda row: row.section)
    print()
    print(report.render())
    print()
    print(
        "Where one transaction's ingest time goes (CPU time, whole write path on one thread, "
        f"{report.extra['breakdown']['txs']:,} txs):"
    )
    print(report.extra["breakdown_text"])
    print()
    for note in report.notes:
        print(f"* {note}")
    busy = ", ".join(f"{name} {cores:.2f}" for name, cores in others.items())
    print(
        f"* other processes kept this many of the {os.cpu_count()} cores busy on average: "
        f"{busy}. Figures that need both cores (2-thread verify, ingest, verify) are "
        "understated by that much; each ratio's baseline was measured under the same load."
    )
    print(
        f"* load average {report.facts['load average at start']} at start, "
        f"{report.facts['load average at end']} at end; wall time {wall:.0f} s"
    )
    if "profile_text" in report.extra:
        print()
        print(report.extra["profile_text"])
    if args.json:
        write_json(args.json, report)
        print(f"* figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
