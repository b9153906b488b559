"""The verifier process behind ingest, and the pipeline that feeds it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from opsledger.client.base import Signer
from opsledger.core import PrivateKey, SignedTransaction, Subject
from opsledger.core.crypto import DOMAIN_TX, VerifyItem
from opsledger.ledger import LedgerNode, sigpool
from opsledger.ledger.sigpool import ProcessSignatureChecker, verifier_pids
from opsledger.ordering import InProcessOrderer, Pending
from opsledger.store import SqliteStore
from opsledger.testing.factories import key_for

NOTE = Subject("release", "r1")
ROOT = Path(__file__).resolve().parents[2]


def _items(count: int, bad: Sequence[int]) -> list[VerifyItem]:
    key = PrivateKey(bytes(range(32)))
    items: list[VerifyItem] = []
    for i in range(count):
        message = f"message {i}".encode()
        sig = key.sign(DOMAIN_TX, message)
        if i in bad:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        items.append((key.public_key, DOMAIN_TX, message, sig))
    return items


def test_the_worker_process_gives_each_signature_its_own_verdict() -> None:
    checker = ProcessSignatureChecker(min_batch=8)
    items = _items(100, bad=[0, 41, 99])
    verdicts = checker.start(items).result(timeout=60)
    assert [i for i, ok in enumerate(verdicts) if not ok] == [0, 41, 99]
    assert checker.verify_many(items[:3]) == [False, True, True]  # small: in-process


def test_a_killed_worker_costs_no_verdict() -> None:
    checker = ProcessSignatureChecker(min_batch=8)
    items = _items(64, bad=[7])
    assert checker.verify_many(items).count(False) == 1  # the worker is up
    (pid,) = verifier_pids()
    os.kill(pid, signal.SIGKILL)
    for _ in range(3):  # the dead worker is noticed, replaced, and verdicts stay exact
        verdicts = checker.verify_many(items)
        assert [i for i, ok in enumerate(verdicts) if not ok] == [7]
    assert verifier_pids() and verifier_pids() != [pid]


def test_a_stopped_worker_is_killed_and_its_batch_verified_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGSTOP (or a wedged worker): requests wait with no reply. The watchdog kills the
    worker after the stall limit and the batch is verified in this process."""
    checker = ProcessSignatureChecker(min_batch=8)
    items = _items(64, bad=[5])
    assert checker.verify_many(items).count(False) == 1  # a worker is up
    monkeypatch.setattr(sigpool, "_STALL_SECONDS", 0.2)
    (pid,) = verifier_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        verdicts = checker.start(items).result(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert [i for i, ok in enumerate(verdicts) if not ok] == [5]
    assert pid not in verifier_pids()


def test_a_batch_bigger_than_a_frame_is_sent_as_several(monkeypatch: pytest.MonkeyPatch) -> None:
    """No single frame may take long (the watchdog would take a slow reply for a stall):
    a big batch goes as frames of at most ``_MAX_FRAME``, verdicts in order."""
    monkeypatch.setattr(sigpool, "_MAX_FRAME", 16)
    checker = ProcessSignatureChecker(min_batch=8)
    items = _items(70, bad=[0, 15, 16, 69])
    checker.verify_many(items[:8])  # a worker is up
    worker = sigpool._shared.current()
    assert worker is not None
    answered = worker.answered
    verdicts = checker.start(items).result(timeout=60)
    assert [i for i, ok in enumerate(verdicts) if not ok] == [0, 15, 16, 69]
    assert worker.answered - answered == 5  # 16 + 16 + 16 + 16 + 6


def test_the_worker_runs_under_any_main_module(tmp_path: Path) -> None:
    """``python -c`` has no main file; multiprocessing's spawn could not start a worker
    there. The worker is started by path, so it works, and uses a real process."""
    code = (
        "from tests.ledger.test_sigpool import _items\n"
        "from opsledger.ledger.sigpool import ProcessSignatureChecker, verifier_pids\n"
        "import os\n"
        "v = ProcessSignatureChecker(min_batch=8).verify_many(_items(40, bad=[3]))\n"
        "assert [i for i, ok in enumerate(v) if not ok] == [3], v\n"
        "(pid,) = verifier_pids()\n"
        "assert pid != os.getpid()\n"
        "print('ok', pid)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
    assert "verifying in-process" not in done.stderr


def test_many_threads_share_the_worker_and_get_their_own_verdicts() -> None:
    """Frames from many threads interleave on one pipe; each reply must reach its own
    caller, and a writer blocked on a full pipe must not stop the replies (a deadlock
    here would fail the timeout, not hang the suite)."""
    checker = ProcessSignatureChecker(min_batch=8)
    batches = [(_items(64 + t, bad=[t % 7, 40 + t % 5]), t) for t in range(16)]
    failures: list[str] = []

    def run(items: list[VerifyItem], t: int) -> None:
        for _ in range(15):
            verdicts = checker.start(items).result(timeout=60)
            bad = [i for i, ok in enumerate(verdicts) if not ok]
            if bad != sorted({t % 7, 40 + t % 5}):
                failures.append(f"thread {t}: {bad}")

    threads = [threading.Thread(target=run, args=batch) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_a_forked_child_gets_its_own_worker_and_its_own_verdicts() -> None:
    """A fork inherits the parent's worker; its frames must never be answered into the
    parent's futures (forgeries would pass). The child starts its own worker."""
    checker = ProcessSignatureChecker(min_batch=8)
    parent_items = _items(80, bad=[5])
    assert checker.verify_many(parent_items).count(False) == 1  # the parent's worker is up
    (parent_worker,) = verifier_pids()
    pid = os.fork()
    if pid == 0:  # the child: exit status says whether it got exactly its own verdicts
        code = 1
        try:
            verdicts = checker.verify_many(_items(90, bad=[1, 2]))
            mine = verifier_pids()
            ok = [i for i, ok in enumerate(verdicts) if not ok] == [1, 2]
            code = 0 if ok and mine and mine != [parent_worker] else 2
        finally:
            os._exit(code)
    for _ in range(20):  # meanwhile the parent keeps using its own worker
        assert [i for i, ok in enumerate(checker.verify_many(parent_items)) if not ok] == [5]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert verifier_pids() == [parent_worker]


def test_the_worker_ignores_pythonpath_and_the_parents_secrets(tmp_path: Path) -> None:
    """The node runs isolated (``python -I``), so a planted ``nacl`` on PYTHONPATH is not
    what it imports; the worker must not import it either (it would die, or worse,
    judge), and no token of the node's environment is passed down."""
    fake = tmp_path / "evil" / "nacl"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('planted nacl must not load')\n")
    code = (
        "import os, sys\n"
        "sys.path.insert(0, os.getcwd())\n"
        "from tests.ledger.test_sigpool import _items\n"
        "from opsledger.ledger.sigpool import ProcessSignatureChecker, verifier_pids\n"
        "v = ProcessSignatureChecker(min_batch=8).verify_many(_items(40, bad=[3]))\n"
        "assert [i for i, ok in enumerate(v) if not ok] == [3], v\n"
        "(pid,) = verifier_pids()\n"
        "env = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "assert b'OPSLEDGER_TOKEN' not in env, env\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OPSLEDGER_TOKEN": "s3cret", "PYTHONPATH": str(tmp_path / "evil")}
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "verifying in-process" not in done.stderr


def test_a_worker_that_cannot_start_is_not_restarted_for_every_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No usable worker (here: its script is missing): every batch is still verified,
    in-process, and after three failed starts no new process is tried for a while."""
    from opsledger.ledger import sigpool

    starts: list[int] = []
    original = sigpool._Worker.__init__

    def counted(self: Any) -> None:
        starts.append(1)
        original(self)

    monkeypatch.setattr(sigpool, "_WORKER", tmp_path / "missing.py")
    monkeypatch.setattr(sigpool, "_shared", sigpool._SharedWorker())
    monkeypatch.setattr(sigpool._Worker, "__init__", counted)
    checker = ProcessSignatureChecker(min_batch=8)
    items = _items(32, bad=[9])
    for _ in range(12):
        verdicts = checker.verify_many(items)
        assert [i for i, ok in enumerate(verdicts) if not ok] == [9]
    assert 1 <= len(starts) <= 4


def test_submit_many_through_the_worker_refuses_only_the_forgery(
    db_path: Path, admin: Signer
) -> None:
    store = SqliteStore(db_path)
    store.initialize()
    node = LedgerNode(
        store,
        node_key=key_for("node"),
        orderer=InProcessOrderer(max_batch=100, max_wait=0.002),
        checker=ProcessSignatureChecker(min_batch=16),
        on_close=store.close,
    ).start()
    try:
        good = [admin.sign("note", NOTE, {"text": str(i)}) for i in range(700)]
        forged = good[333]
        forged = SignedTransaction(tx=forged.tx, sig=bytes(64), leaf=forged.leaf, tx_id="0" * 64)
        items: list[bytes | SignedTransaction] = [stx.leaf for stx in good]
        items[333] = forged
        results = node.submit_many(items, chunk=64)
        refused = [i for i, r in enumerate(results) if isinstance(r, Exception)]
        assert refused == [333]
        assert "signature" in str(results[333])
        assert node.head.log_size == 2 + 699
        assert node.verify().transactions == 2 + 699  # raises if anything is wrong
    finally:
        node.close()


def test_flush_cuts_the_block_without_waiting_for_more() -> None:
    """With a minute of ``max_wait``, a lone item waits for company; only ``flush`` can
    deliver it now, together with whatever arrived meanwhile, as one batch."""
    batches: list[int] = []
    delivered = threading.Event()

    def deliver(batch: Sequence[Pending]) -> None:
        batches.append(len(batch))
        delivered.set()

    orderer = InProcessOrderer(max_batch=1000, max_wait=60.0)
    orderer.start(deliver)
    try:
        orderer.submit([Pending(SignedTransaction.parse(_signed_note()))])
        orderer.submit([Pending(SignedTransaction.parse(_signed_note()))], flush=True)
        assert delivered.wait(30)
    finally:
        orderer.stop()
    assert batches == [2]  # the first waited for the second: one block, not two


def _signed_note() -> bytes:
    signer = Signer("admin", key_for("admin"), ledger="")
    return signer.sign("note", NOTE, {"text": "x"}).leaf
