"""The offline verifier catches every kind of tampering and names where."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from opsledger.client.base import Signer
from opsledger.core import (
    Block,
    LedgerVerifier,
    Subject,
    VerificationFailed,
    sign_block,
)
from opsledger.ledger import LedgerNode, create_genesis, iter_store_blocks
from opsledger.ordering import InProcessOrderer
from opsledger.store import SqliteStore
from opsledger.testing.factories import digest, key_for, sample_bodies

Blocks = list[tuple[bytes, list[bytes], str]]


@pytest.fixture(scope="module")
def ledger_blocks(tmp_path_factory: pytest.TempPathFactory) -> Blocks:
    """A small real ledger (several blocks, several actors) as raw bytes."""
    path = Path(tmp_path_factory.mktemp("verify")) / "ledger.db"
    store = SqliteStore(path)
    store.initialize()
    create_genesis(
        store,
        admin_name="admin",
        admin_key=key_for("admin"),
        node_name="node",
        node_key=key_for("node"),
    )
    node = LedgerNode(
        store, node_key=key_for("node"), orderer=InProcessOrderer(max_batch=4, max_wait=0.0)
    ).start()
    admin = Signer("admin", key_for("admin"), ledger=node.checkpoint_origin)
    ci_key = key_for("ci")
    node.submit(
        admin.sign(
            "identity.key_added",
            Subject("actor", "ci"),
            {"actor": "ci", "public_key": ci_key.public_key.b64, "roles": ["ci"]},
        )
    )
    ci = Signer("ci", ci_key, ledger=node.checkpoint_origin)
    for i in range(12):
        node.submit(
            ci.sign(
                "build.finished",
                Subject("artifact", digest(str(i))),
                {**sample_bodies()["build.finished"], "digest": digest(str(i))},
            )
        )
    node.close()
    blocks = [
        (b.data, [r.leaf for r in records], b.checkpoint) for b, records in iter_store_blocks(store)
    ]
    store.close()
    assert len(blocks) >= 5
    return blocks


def _verify(blocks: Blocks, **kwargs: object) -> None:
    verifier = LedgerVerifier(**kwargs)  # type: ignore[arg-type]
    for data, leaves, note in blocks:
        verifier.add_block(data, leaves, note)
    verifier.result()


def _copy(blocks: Blocks) -> Blocks:
    return [(d, list(leaves), n) for d, leaves, n in blocks]


def test_an_untouched_ledger_verifies(ledger_blocks: Blocks) -> None:
    _verify(ledger_blocks)
    genesis = Block.from_bytes(ledger_blocks[0][0]).block_hash
    _verify(ledger_blocks, genesis_hash=genesis)
    with pytest.raises(VerificationFailed, match="pinned"):
        _verify(ledger_blocks, genesis_hash="0" * 64)


def _positions(blocks: Blocks) -> Iterator[tuple[str, int, int, int]]:
    rng = random.Random(7)
    for height, (data, leaves, note) in enumerate(blocks):
        for _ in range(6):
            yield "block", height, 0, rng.randrange(len(data))
            yield "checkpoint", height, 0, rng.randrange(len(note.encode()))
        for i, leaf in enumerate(leaves):
            for _ in range(3):
                yield "leaf", height, i, rng.randrange(len(leaf))


def test_every_flipped_byte_is_caught_at_its_height(ledger_blocks: Blocks) -> None:
    for where, height, index, position in _positions(ledger_blocks):
        blocks = _copy(ledger_blocks)
        data, leaves, note = blocks[height]
        if where == "block":
            flipped = bytearray(data)
            flipped[position] ^= 0x01
            blocks[height] = (bytes(flipped), leaves, note)
        elif where == "leaf":
            flipped = bytearray(leaves[index])
            flipped[position] ^= 0x01
            leaves[index] = bytes(flipped)
        else:
            raw = bytearray(note.encode())
            raw[position] ^= 0x01
            try:
                blocks[height] = (data, leaves, raw.decode())
            except UnicodeDecodeError:
                continue
        with pytest.raises(VerificationFailed) as info:
            _verify(blocks)
        assert info.value.details["height"] == height, (where, height, index, position)


def test_a_removed_or_reordered_transaction_is_caught(ledger_blocks: Blocks) -> None:
    blocks = _copy(ledger_blocks)
    blocks[3][1].pop()
    with pytest.raises(VerificationFailed, match="block 3"):
        _verify(blocks)
    blocks = _copy(ledger_blocks)
    leaves = blocks[2][1]
    if len(leaves) > 1:
        leaves[0], leaves[1] = leaves[1], leaves[0]
        with pytest.raises(VerificationFailed, match="block 2"):
            _verify(blocks)


def test_a_dropped_block_is_caught(ledger_blocks: Blocks) -> None:
    blocks = _copy(ledger_blocks)
    del blocks[2]
    with pytest.raises(VerificationFailed, match="block 2"):
        _verify(blocks)


def test_a_block_re_signed_by_another_key_is_caught(ledger_blocks: Blocks) -> None:
    """Even a fully consistent rewrite fails unless the registered node key signed it."""
    blocks = _copy(ledger_blocks)
    block = Block.from_bytes(blocks[4][0])
    forged = sign_block(replace(block.header, key_id=key_for("mallory").key_id), key_for("mallory"))
    blocks[4] = (forged.to_bytes(), blocks[4][1], blocks[4][2])
    with pytest.raises(VerificationFailed, match="proposer"):
        _verify(blocks)


def test_a_transaction_forged_for_an_actor_is_caught(ledger_blocks: Blocks) -> None:
    """A rewritten leaf with a matching tx id list still fails the signature check."""
    from opsledger.core import Checkpoint, canonical, leaf_hash, root_of, sign_checkpoint
    from opsledger.core.merkle import CompactRange

    blocks = _copy(ledger_blocks)
    from opsledger.core import origin_for

    ledger = origin_for(Block.from_bytes(blocks[0][0]).block_hash)
    mallory = Signer("ci", key_for("mallory"), ledger=ledger)
    forged_leaf = mallory.sign(
        "build.finished",
        Subject("artifact", digest("evil")),
        {**sample_bodies()["build.finished"], "digest": digest("evil")},
    ).leaf
    # rebuild the last block around the forged leaf with the real node key (a node-key
    # compromise): only the identity rules can catch this one
    data, leaves, _ = blocks[-1]
    leaves[-1] = forged_leaf
    tree = CompactRange.empty()
    for _, ls, _ in blocks:
        tree.extend(leaf_hash(leaf) for leaf in ls)
    header = Block.from_bytes(data).header
    from opsledger.core import sha256_hex

    header = replace(
        header,
        tx_ids=tuple(sha256_hex(leaf) for leaf in leaves),
        tx_root=root_of([leaf_hash(leaf) for leaf in leaves]).hex(),
        log_root=tree.root().hex(),
    )
    block = sign_block(header, key_for("node"))
    origin = Block.from_bytes(blocks[0][0]).block_hash
    from opsledger.core import origin_for

    note = sign_checkpoint(
        Checkpoint(origin_for(origin), header.log_size, tree.root()), "node", key_for("node")
    )
    blocks[-1] = (block.to_bytes(), leaves, note)
    assert canonical(Block.from_bytes(block.to_bytes()).to_dict()) == block.to_bytes()
    with pytest.raises(VerificationFailed, match=r"does not belong|signature") as info:
        _verify(blocks)
    assert info.value.details["tx_id"] == sha256_hex(forged_leaf)


def test_a_transaction_replayed_from_another_ledger_is_caught(
    ledger_blocks: Blocks, tmp_path: Path
) -> None:
    """The same actor and key on two ledgers (a fork, a test copy): a transaction signed
    for one names that ledger, so neither admission nor verify accept it in the other."""
    other = SqliteStore(tmp_path / "other.db")
    other.initialize()
    create_genesis(
        other,
        admin_name="admin",
        admin_key=key_for("admin"),
        node_name="node",
        node_key=key_for("node"),
    )
    node = LedgerNode(other, node_key=key_for("node")).start()
    try:
        stranger = Signer("admin", key_for("admin"), ledger=node.checkpoint_origin)
        replayed = stranger.sign("note", Subject("t", "x"), {"text": "from elsewhere"})
        from opsledger.core import PermissionDenied, SignedTransaction

        this_ledger = SignedTransaction.parse(ledger_blocks[1][1][0])
        with pytest.raises(PermissionDenied, match="signed for ledger"):
            node.submit(this_ledger.leaf)
        node.submit(replayed)
    finally:
        node.close()
        other.close()
