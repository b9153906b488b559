"""Nothing acknowledged is ever lost, and concurrent writers never fork the log.

Both tests run a real ``serve`` process with several writer threads posting signed
transactions over HTTP, then check the ledger from the store itself: every
acknowledged receipt is there at the same leaf index, leaf indexes are exactly
0..n-1, and a full ``verify`` from genesis passes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from opsledger.app import Home
from opsledger.client.base import LedgerClient, Signer
from opsledger.client.http import HttpClient
from opsledger.core import OpsledgerError, Receipt, SignedTransaction, UpstreamError
from opsledger.ledger import verify_store
from opsledger.store import open_store

if TYPE_CHECKING:
    from .conftest import ServerProcess

pytestmark = pytest.mark.slow

StartServer = Callable[[Home], "ServerProcess"]
MakeNote = Callable[..., SignedTransaction]
Register = Callable[[LedgerClient, Signer, str, list[str]], Signer]


def register_writers(home: Home, register_actor: Register, count: int) -> list[Signer]:
    """Writers with keys registered before the server starts (the server takes the lock)."""
    from opsledger.client.local import LocalClient

    client = LocalClient(home.open_node())
    try:
        admin = home.signer()
        return [register_actor(client, admin, f"writer-{i}", ["operator"]) for i in range(count)]
    finally:
        client.close()


class Writers:
    """Threads that each sign and post notes as one actor until told to stop or the
    server goes away; every acknowledged receipt is recorded."""

    def __init__(self, url: str, signers: list[Signer], make_note: MakeNote) -> None:
        self.url = url
        self.signers = signers
        self.make_note = make_note
        self.acked: list[Receipt] = []
        self.refused: list[OpsledgerError] = []
        self.lost_connection = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(signer,), daemon=True) for signer in signers
        ]

    def _run(self, signer: Signer) -> None:
        with HttpClient(self.url, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                stx = self.make_note(signer, f"{signer.actor} #{n}")
                n += 1
                try:
                    receipt = client.submit(stx)
                except UpstreamError:
                    with self._lock:
                        self.lost_connection += 1
                    return
                except OpsledgerError as exc:  # pragma: no cover - would fail the test
                    with self._lock:
                        self.refused.append(exc)
                    continue
                assert receipt.tx_id == stx.tx_id
                with self._lock:
                    self.acked.append(receipt)

    def start(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` receipts are in (a loaded machine may be slow to start)."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.acked) >= count, f"only {len(self.acked)} writes in {timeout} s"

    def join(self, timeout: float = 30.0) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive()


def check_ledger(home: Home, acked: list[Receipt]) -> int:
    """Read the store directly: acked receipts present and unchanged, leaf indexes
    contiguous, unique tx ids, and verify from genesis. Returns the log size."""
    store = open_store(home.resolve_store(home.config().store))
    try:
        records = list(store.iter_txs(0))
        assert [r.leaf_index for r in records] == list(range(len(records)))
        assert len({r.tx_id for r in records}) == len(records)
        by_id = {r.tx_id: r for r in records}
        for receipt in acked:
            record = by_id.get(receipt.tx_id)
            assert record is not None, f"acknowledged {receipt.tx_id} is lost"
            assert (record.leaf_index, record.height) == (receipt.leaf_index, receipt.height)
        result = verify_store(store)
        head = store.head()
        assert head is not None
        assert (result.height, result.log_size) == (head.height, head.log_size)
        assert result.log_size == len(records)
        heights = [block.height for block in store.iter_blocks(0)]
        assert heights == list(range(len(heights)))  # one chain, no gap, no fork
        return result.log_size
    finally:
        store.close()


def test_sigkill_mid_stream_loses_no_acknowledged_transaction(
    home: Home, start_server: StartServer, make_note: MakeNote, register_actor: Register
) -> None:
    signers = register_writers(home, register_actor, 4)
    server = start_server(home)
    writers = Writers(server.url, signers, make_note).start()
    time.sleep(1.5)
    writers.wait_for(20)  # enough acknowledged writes for the test to prove something
    server.kill()
    writers.join()
    assert writers.refused == []
    assert writers.lost_connection == len(signers)
    assert home.serve_path.exists()  # stale: the killed server could not remove it
    assert home.server_url() is None  # ...and nothing trusts it, the lock died too

    restarted = start_server(home)
    assert home.server_url() == restarted.url
    with HttpClient(restarted.url) as client:
        for receipt in writers.acked[:: max(1, len(writers.acked) // 50)]:
            view = client.get_transaction(receipt.tx_id, proof=True)
            assert view["leaf_index"] == receipt.leaf_index
        # the restarted node goes on where the log ended, with the same writers
        more = Writers(restarted.url, signers, make_note).start()
        more.wait_for(len(signers))
        more.join()
        assert more.refused == []
        assert len(more.acked) > 0
    assert restarted.stop() == 0, restarted.log()

    size = check_ledger(home, writers.acked + more.acked)
    assert size >= 2 + len(signers) + len(writers.acked) + len(more.acked)
    node = home.open_node(writable=False)
    try:
        assert node.verify().log_size == size
    finally:
        node.close()


def test_many_concurrent_writers_never_fork_or_reuse_a_leaf(
    home: Home, start_server: StartServer, make_note: MakeNote, register_actor: Register
) -> None:
    signers = register_writers(home, register_actor, 16)
    server = start_server(home)
    writers = Writers(server.url, signers, make_note).start()
    time.sleep(1.0)
    writers.wait_for(100)
    writers.join()
    assert writers.refused == []
    assert writers.lost_connection == 0
    leaves = sorted(receipt.leaf_index for receipt in writers.acked)
    assert len(set(leaves)) == len(leaves)
    assert server.stop() == 0, server.log()

    size = check_ledger(home, writers.acked)
    # genesis (2) + one key each + every acknowledged note: nothing else was written
    assert size == 2 + len(signers) + len(writers.acked)
    assert leaves == list(range(2 + len(signers), size))
