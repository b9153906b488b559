"""The node end to end over a real SQLite store: admission, blocks, proofs, restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from opsledger.client.base import Signer
from opsledger.core import (
    PermissionDenied,
    ReplayRejected,
    SchemaError,
    SignedTransaction,
    StorageError,
    Subject,
    ThreadedSignatureChecker,
    open_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from opsledger.ledger import LedgerNode, verify_store
from opsledger.ordering import InProcessOrderer
from opsledger.store import SqliteStore, TxQuery
from opsledger.testing.factories import digest, key_for, sample_bodies

from .conftest import open_node, register

NOTE = Subject("ticket", "1")


def _root_of(note: str) -> tuple[int, bytes]:
    checkpoint = open_checkpoint(note, {"node": key_for("node").public_key})
    return checkpoint.size, checkpoint.root


def test_submit_returns_a_durable_receipt(node: LedgerNode, admin: Signer) -> None:
    stx = admin.sign("note", NOTE, {"text": "hello"})
    receipt = node.submit(stx)
    assert receipt.tx_id == stx.tx_id
    assert receipt.leaf_index == 2  # genesis holds two identity transactions
    record = node.get_tx(stx.tx_id)
    assert record.leaf == stx.leaf and record.height == receipt.height


def test_refusals_change_nothing(node: LedgerNode, admin: Signer) -> None:
    head = node.head
    dev = register(node, admin, "dev", ["developer"])
    head = node.head
    with pytest.raises(PermissionDenied, match="may not write"):
        node.submit(dev.sign("build.finished", NOTE, sample_bodies()["build.finished"]))
    stx = dev.sign("note", NOTE, {"text": "once"})
    node.submit(stx)
    head = node.head
    with pytest.raises(ReplayRejected):
        node.submit(stx)
    with pytest.raises(PermissionDenied, match="unknown actor"):
        node.submit(
            Signer("ghost", key_for("ghost"), ledger=node.checkpoint_origin).sign(
                "note", NOTE, {"text": "x"}
            )
        )
    with pytest.raises(SchemaError):
        node.submit(b'{"v": 1}')
    assert node.head == head
    assert node.store.count_txs() == head.log_size


def test_submit_many_mixes_receipts_and_errors(node: LedgerNode, admin: Signer) -> None:
    good = [admin.sign("note", NOTE, {"text": str(i)}) for i in range(300)]
    forged = admin.sign("note", NOTE, {"text": "forged"})
    forged = type(forged)(tx=forged.tx, sig=bytes(64), leaf=forged.leaf, tx_id=forged.tx_id)
    results = node.submit_many([*good[:150], forged, b"not json", *good[150:]])
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 2
    receipts = [r for r in results if not isinstance(r, Exception)]
    assert [r.leaf_index for r in receipts] == list(range(2, 302))
    assert node.head.log_size == 302


def test_proofs_verify_against_signed_checkpoints(node: LedgerNode, admin: Signer) -> None:
    receipts = [node.submit(admin.sign("note", NOTE, {"text": str(i)})) for i in range(5)]
    sizes = []
    for receipt in receipts:
        proof = node.inclusion_proof(receipt.tx_id)
        size, root = _root_of(proof["checkpoint"])
        assert size == proof["tree_size"] == node.head.log_size
        verify_inclusion(
            proof["leaf_index"],
            size,
            bytes.fromhex(proof["leaf_hash"]),
            [bytes.fromhex(h) for h in proof["hashes"]],
            root,
        )
        sizes.append(size)
    early = node.store.get_block(1)
    assert early is not None
    old = node.inclusion_proof(receipts[0].tx_id, size=receipts[0].leaf_index + 1)
    assert old["tree_size"] == receipts[0].leaf_index + 1
    consistency = node.consistency_proof(early.log_size, node.head.log_size)
    first_size, first_root = _root_of(consistency["first_checkpoint"])
    second_size, second_root = _root_of(consistency["second_checkpoint"])
    verify_consistency(
        first_size,
        second_size,
        first_root,
        second_root,
        [bytes.fromhex(h) for h in consistency["hashes"]],
    )


def test_restart_restores_registry_nonces_and_tree(db_path: Path, admin: Signer) -> None:
    node = open_node(db_path)
    ci = register(node, admin, "ci", ["ci"])
    stx = ci.sign(
        "build.finished", Subject("artifact", digest("a")), sample_bodies()["build.finished"]
    )
    node.submit(stx)
    head = node.head
    node.close()
    again = open_node(db_path)
    try:
        assert again.head == head
        with pytest.raises(ReplayRejected):
            again.submit(stx)
        receipt = again.submit(
            ci.sign(
                "test.finished", Subject("artifact", digest("a")), sample_bodies()["test.finished"]
            )
        )
        assert receipt.leaf_index == head.log_size
        assert verify_store(again.store).log_size == head.log_size + 1
    finally:
        again.close()


def test_many_writers_never_fork_or_reuse_a_leaf(node: LedgerNode, admin: Signer) -> None:
    signers = [register(node, admin, f"w{i}", ["operator"]) for i in range(6)]
    receipts = []
    lock = threading.Lock()

    def write(signer: Signer) -> None:
        for j in range(40):
            r = node.submit(
                signer.sign(
                    "alert.fired", Subject("node", "a"), {"alert": f"a{j}", "severity": "warning"}
                )
            )
            with lock:
                receipts.append(r)

    threads = [threading.Thread(target=write, args=(s,)) for s in signers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leaves = sorted(r.leaf_index for r in receipts)
    assert len(set(leaves)) == 240
    result = verify_store(node.store)
    assert result.log_size == node.head.log_size == 2 + 6 + 240
    assert result.height == node.head.height


def test_queries_use_the_indexed_filters(node: LedgerNode, admin: Signer) -> None:
    ci = register(node, admin, "ci", ["ci"])
    d = digest("shop")
    node.submit(
        ci.sign("build.finished", Subject("artifact", d), sample_bodies()["build.finished"])
    )
    node.submit(ci.sign("test.finished", Subject("artifact", d), sample_bodies()["test.finished"]))
    node.submit(admin.sign("note", NOTE, {"text": "x"}))
    assert [r.type for r in node.query(TxQuery(subject_kind="artifact", subject_id=d))] == [
        "build.finished",
        "test.finished",
    ]
    assert [r.type for r in node.query(TxQuery(type="build.*"))] == ["build.finished"]
    assert len(node.query(TxQuery(actor="ci"))) == 2


class _BrokenRule:
    """An admission rule with a bug: it raises something that is not a refusal."""

    def check(self, stx: SignedTransaction) -> None:
        if stx.tx.body.get("text") == "boom":
            raise RuntimeError("a bug in a rule")

    def apply(self, stx: SignedTransaction, leaf_index: int, token: object) -> None:
        pass

    def load(self, store: object) -> None:
        pass


def test_a_rule_that_crashes_leaves_no_state_behind(db_path: Path, admin: Signer) -> None:
    """The batch's earlier transactions were applied in memory, then nothing was stored:
    the node must not keep believing in them (an actor that does not exist, a nonce used)."""
    store = SqliteStore(db_path)
    store.initialize()
    node = LedgerNode(
        store,
        node_key=key_for("node"),
        orderer=InProcessOrderer(max_batch=50),
        checker=ThreadedSignatureChecker(),
        rules=[_BrokenRule()],
        on_close=store.close,
    ).start()
    try:
        bob = key_for("bob")
        added = admin.sign(
            "identity.key_added",
            Subject("actor", "bob"),
            {"actor": "bob", "public_key": bob.public_key.b64, "roles": ["developer"]},
        )
        boom = admin.sign("note", NOTE, {"text": "boom"})
        with pytest.raises(RuntimeError):
            node.submit_many([added, boom])
        assert "bob" not in node.registry.actors
        assert node.head.log_size == node.store.count_txs() == 2
        receipt = node.submit(added)  # its nonce was never used
        assert receipt.leaf_index == 2
        assert "bob" in node.registry.actors
    finally:
        node.close()


def test_submit_many_on_a_stopped_node_fails_each_item(node: LedgerNode, admin: Signer) -> None:
    notes = [admin.sign("note", NOTE, {"text": str(i)}) for i in range(3)]
    node.close()
    results = node.submit_many(notes)
    assert [type(r) for r in results] == [StorageError] * 3


def test_verify_while_the_node_writes_never_fails_a_valid_ledger(
    db_path: Path, node: LedgerNode, admin: Signer
) -> None:
    """verify opens the store beside a running node (``opsledger verify`` next to
    ``serve``): blocks committed during the walk or between its final reads are not
    damage."""
    notes = [admin.sign("note", NOTE, {"text": str(i)}) for i in range(400)]
    done = threading.Event()

    def write() -> None:
        try:
            for note in notes:
                node.submit(note)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    runs = 0
    try:
        while not done.is_set() or runs < 3:
            store = SqliteStore(db_path)
            try:
                verify_store(store)  # raises VerificationFailed on any false alarm
            finally:
                store.close()
            runs += 1
    finally:
        writer.join()
    assert node.head.log_size == 2 + len(notes)
