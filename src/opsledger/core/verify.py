"""Offline verification of a whole ledger, block by block, from bytes alone.

``LedgerVerifier`` is fed each block's canonical bytes, its leaves (canonical signed
transactions) and its checkpoint note, in height order, and re-checks everything a node
checked when it wrote them. It needs no store, no network and no clock, so the same code
verifies a live home (``opsledger verify``) and an exported bundle on an auditor's laptop.

Invariants checked, per block:

1. the block parses; its height is the previous height + 1 (0 first); ``prev_hash`` is the
   previous header's hash (zeros for genesis); its time does not go backwards;
2. ``tx_ids`` are exactly SHA-256 of the given leaves, in order; ``tx_root`` is their
   RFC 9162 root;
3. ``log_size`` grows by the number of leaves and ``log_root`` is the global log's root;
4. every transaction passes the schema and the identity rules at its position (signature
   by an active key of the actor, role, strictly increasing nonce; see ``identity``), the
   first being the self-signed genesis admin;
5. the proposer is an actor with the ``node`` role whose key ``key_id`` is active and
   signed the header (genesis: checked after its transactions registered the node);
6. the checkpoint note is for this ledger's origin, at ``log_size`` with ``log_root``,
   signed by the proposer.

The first failure raises ``VerificationFailed`` naming the height, the tx id where one
applies, and expected vs computed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from opsledger.core.block import GENESIS_PREV_HASH, Block
from opsledger.core.checkpoint import open_checkpoint
from opsledger.core.crypto import DOMAIN_TX, PublicKey, SignatureChecker
from opsledger.core.encoding import sha256_hex
from opsledger.core.errors import OpsledgerError, VerificationFailed
from opsledger.core.identity import Registry
from opsledger.core.merkle import CompactRange, leaf_hash, root_of
from opsledger.core.tx import SignedTransaction

__all__ = ["LedgerVerifier", "PreparedBlock", "VerifyResult", "origin_for"]

NODE_ROLE = "node"


def origin_for(genesis_hash: str) -> str:
    """The checkpoint origin line of the ledger whose genesis header hashes to this."""
    return f"opsledger/{genesis_hash[:32]}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    height: int
    log_size: int
    log_root: str
    genesis_hash: str
    origin: str
    transactions: int


@dataclass(frozen=True, slots=True)
class PreparedBlock:
    """A block's transactions parsed, with their signature checks under way."""

    leaves: Sequence[bytes]
    parsed: list[SignedTransaction | OpsledgerError]
    positions: list[int]  # index in ``parsed`` of each verdict
    verdicts: Future[list[bool]]


class LedgerVerifier:
    """Feed blocks in order with ``add_block``; call ``result`` at the end.

    ``genesis_hash`` pins the ledger (an auditor's trust anchor); without it the first
    block is trusted as genesis. ``fork_origin``/``fork_height``: a forked ledger's
    checkpoints above ``fork_height`` carry its own origin.
    """

    def __init__(
        self,
        *,
        genesis_hash: str | None = None,
        checker: SignatureChecker | None = None,
        fork_origin: str | None = None,
        fork_height: int | None = None,
    ) -> None:
        self._pinned_genesis = genesis_hash
        self._checker = checker or SignatureChecker()
        self._fork_origin = fork_origin
        self._fork_height = fork_height
        self.registry = Registry()
        self._range = CompactRange.empty()
        # The tree nodes the last added block completed, (level, index, hash): what a
        # node stores for that block, so a store's copy can be checked against them.
        self.last_nodes: list[tuple[int, int, bytes]] = []
        self._height = -1
        self._prev_hash = GENESIS_PREV_HASH
        self._prev_time = ""
        self._genesis_hash = ""
        self._origin = ""
        self._transactions = 0

    def prepare(self, leaves: Sequence[bytes]) -> PreparedBlock:
        """Parse a coming block's transactions and start verifying the signatures whose
        keys are known now, so that the checker works while this thread finishes the
        block before it (``verify_store`` pipelines blocks this way).

        Nothing is judged here: parse errors wait in the result until ``add_block``
        reaches them, so failures are reported in the same order as without ``prepare``.
        A key added by the block before is not known yet; its signatures are checked by
        the registry at admission instead. Keys map to key ids by hash, so a signature
        checked early under a key id is the very check admission would make."""
        parsed: list[SignedTransaction | OpsledgerError] = []
        batch: list[tuple[PublicKey, bytes, bytes, bytes]] = []
        positions: list[int] = []
        for i, leaf in enumerate(leaves):
            try:
                stx = SignedTransaction.parse(leaf)
            except OpsledgerError as exc:
                parsed.append(exc)
                continue
            parsed.append(stx)
            key = self.registry.known_key(stx.tx.key_id)
            if key is not None:
                batch.append((key, DOMAIN_TX, stx.message, stx.sig))
                positions.append(i)
        return PreparedBlock(leaves, parsed, positions, self._checker.start(batch))

    def add_block(
        self,
        block_bytes: bytes,
        leaves: Sequence[bytes],
        checkpoint: str,
        *,
        prepared: PreparedBlock | None = None,
    ) -> list[SignedTransaction]:
        """Verify the next block; return its parsed transactions (callers that need them,
        such as the store's column check, then never parse a leaf twice). ``prepared``
        is what ``prepare`` made of the same ``leaves``."""
        height = self._height + 1
        try:
            block = Block.from_bytes(block_bytes)
        except OpsledgerError as exc:
            raise VerificationFailed(f"block {height} is malformed: {exc}", height=height) from exc
        if block.to_bytes() != block_bytes:
            raise _fail(height, "block bytes are not canonical")
        header = block.header
        if header.height != height:
            raise _fail(
                height, "block height out of order", expected=height, computed=header.height
            )
        if header.prev_hash != self._prev_hash:
            raise _fail(
                height,
                "prev_hash does not link to the previous block",
                expected=self._prev_hash,
                computed=header.prev_hash,
            )
        if header.time < self._prev_time:
            raise _fail(
                height,
                "block time goes backwards",
                expected=f">= {self._prev_time}",
                computed=header.time,
            )
        if height == 0:
            self._genesis_hash = block.block_hash
            if self._pinned_genesis and self._pinned_genesis != self._genesis_hash:
                raise _fail(
                    0,
                    "genesis does not match the pinned ledger id",
                    expected=self._pinned_genesis,
                    computed=self._genesis_hash,
                )
            self._origin = origin_for(self._genesis_hash)
        ids = [sha256_hex(leaf) for leaf in leaves]
        if list(header.tx_ids) != ids:
            bad = next(
                (i for i, (a, b) in enumerate(zip(header.tx_ids, ids, strict=False)) if a != b),
                min(len(ids), len(header.tx_ids)),
            )
            raise _fail(
                height,
                "transaction bytes do not match the block's tx ids",
                tx_id=header.tx_ids[bad] if bad < len(header.tx_ids) else None,
                expected=header.tx_ids[bad] if bad < len(header.tx_ids) else None,
                computed=ids[bad] if bad < len(ids) else None,
            )
        hashes = [leaf_hash(leaf) for leaf in leaves]
        tx_root = root_of(hashes).hex()
        if header.tx_root != tx_root:
            raise _fail(
                height,
                "tx_root does not match the block's transactions",
                expected=header.tx_root,
                computed=tx_root,
            )
        proposer_key = None if height == 0 else self._proposer_key(block)
        if prepared is None or prepared.leaves is not leaves:
            prepared = self.prepare(leaves)
        parsed = self._admit_all(height, prepared, ids)
        self.last_nodes = self._range.extend(hashes)
        if header.log_size != self._range.size:
            raise _fail(
                height, "log_size is wrong", expected=self._range.size, computed=header.log_size
            )
        log_root = self._range.root().hex()
        if header.log_root != log_root:
            raise _fail(
                height,
                "log_root does not match the global log",
                expected=header.log_root,
                computed=log_root,
            )
        if proposer_key is None:
            proposer_key = self._proposer_key(block)
        if not block.verify_signature(proposer_key):
            raise _fail(height, f"block signature by {header.proposer} does not verify")
        self._check_checkpoint(
            height,
            checkpoint,
            proposer=header.proposer,
            key=proposer_key,
            size=header.log_size,
            root=log_root,
        )
        self._height = height
        self._prev_hash = block.block_hash
        self._prev_time = header.time
        self._transactions += len(leaves)
        return parsed

    def _proposer_key(self, block: Block) -> PublicKey:
        header = block.header
        actor = self.registry.actors.get(header.proposer)
        state = actor.keys.get(header.key_id) if actor else None
        if actor is None or state is None or not state.active or NODE_ROLE not in actor.roles:
            raise _fail(
                header.height,
                f"proposer {header.proposer!r} is not a node with an active key {header.key_id}",
            )
        return state.public_key

    def _admit_all(
        self, height: int, prepared: PreparedBlock, ids: Sequence[str]
    ) -> list[SignedTransaction]:
        parsed: list[SignedTransaction] = []
        for leaf, item, tx_id in zip(prepared.leaves, prepared.parsed, ids, strict=True):
            if isinstance(item, OpsledgerError):
                raise _fail(height, f"transaction is invalid: {item.message}", tx_id=tx_id)
            if item.leaf != leaf:
                raise _fail(height, "transaction bytes are not canonical", tx_id=tx_id)
            parsed.append(item)
        # The signatures whose keys were known when the block was prepared were verified
        # in one parallel batch (see ``prepare``); the sequential pass below then only
        # checks registry state, and verifies the rest itself.
        verified = [False] * len(parsed)
        for i, ok in zip(prepared.positions, prepared.verdicts.result(), strict=True):
            if not ok:
                raise _fail(height, "signature does not verify", tx_id=ids[i])
            verified[i] = True
        ledger = self._ledger_at(height)
        for i, stx in enumerate(parsed):
            if height > 0 and not self.registry.actors:
                raise _fail(height, "genesis anchor outside block 0", tx_id=ids[i])
            if stx.tx.ledger != ledger:
                raise _fail(
                    height,
                    f"transaction is signed for ledger {stx.tx.ledger!r}, not {ledger!r}"
                    " (replayed from another ledger)",
                    tx_id=ids[i],
                )
            try:
                self.registry.admit(stx, signature_verified=verified[i])
            except OpsledgerError as exc:
                raise _fail(height, f"transaction refused: {exc.message}", tx_id=ids[i]) from exc
        return parsed

    def _ledger_at(self, height: int) -> str:
        """What every transaction of block ``height`` must name as its ledger."""
        if height == 0:
            return ""
        if self._fork_origin and self._fork_height is not None and height > self._fork_height:
            return self._fork_origin
        return self._origin

    def _check_checkpoint(
        self, height: int, note: str, *, proposer: str, key: PublicKey, size: int, root: str
    ) -> None:
        origin = self._origin
        if self._fork_origin and self._fork_height is not None and height > self._fork_height:
            origin = self._fork_origin
        try:
            checkpoint = open_checkpoint(note, {proposer: key}, origin=origin)
        except OpsledgerError as exc:
            raise _fail(height, f"checkpoint is invalid: {exc.message}") from exc
        if checkpoint.size != size or checkpoint.root.hex() != root:
            raise _fail(
                height,
                "checkpoint does not match the block",
                expected=f"{size} {root}",
                computed=f"{checkpoint.size} {checkpoint.root.hex()}",
            )

    def result(self) -> VerifyResult:
        if self._height < 0:
            raise VerificationFailed("the ledger holds no block")
        return VerifyResult(
            height=self._height,
            log_size=self._range.size,
            log_root=self._range.root().hex(),
            genesis_hash=self._genesis_hash,
            origin=self._origin,
            transactions=self._transactions,
        )


def _fail(height: int, reason: str, **details: object) -> VerificationFailed:
    return VerificationFailed(f"block {height}: {reason}", height=height, reason=reason, **details)
