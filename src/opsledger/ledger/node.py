"""A ledger node: admission, sequencing, block building, commit, queries and proofs.

Write path (one committer thread, fed by the orderer)::

    bytes ──prepare()──▶ parse + schema + signature (caller's thread, parallel)
          ──orderer────▶ batch in one total order
          ──_deliver()─▶ identity rules + nonce per tx (sequential, in order)
                         ──▶ leaves, tree nodes, block header, node signature,
                             checkpoint ──▶ store.append_block (one durable transaction)
                         ──▶ receipts resolve: a write is acknowledged only now

Refused transactions fail their own future and change nothing; the rest of the batch
goes on. If the store fails, every writer in the block gets the error and the node
reloads its in-memory state (registry, tree edge, head) from the store.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from opsledger.core import (
    GENESIS_PREV_HASH,
    BlockHeader,
    Checkpoint,
    Clock,
    CompactRange,
    InvalidInput,
    NotFound,
    OpsledgerError,
    PermissionDenied,
    PrivateKey,
    PublicKey,
    Receipt,
    Registry,
    SignatureChecker,
    SignedTransaction,
    StorageError,
    Subject,
    SystemClock,
    Transaction,
    VerifyResult,
    consistency_proof,
    format_ts,
    inclusion_proof,
    leaf_hash,
    origin_for,
    root_of,
    sign_block,
    sign_checkpoint,
    sign_transaction,
)
from opsledger.core.crypto import DOMAIN_TX
from opsledger.ledger.verify import verify_store
from opsledger.ordering import InProcessOrderer, Orderer, Pending, PendingGroup
from opsledger.store import BlockRecord, LedgerStore, TxQuery, TxRecord

__all__ = [
    "AdmissionRule",
    "CommitListener",
    "LedgerNode",
    "Receipt",
    "Service",
    "create_genesis",
]


class AdmissionRule(Protocol):
    """A rule beyond identity, applied in log order at admission (and again by verify):
    ``check`` raises to refuse and may return a token that ``apply`` receives."""

    def check(self, stx: SignedTransaction) -> Any: ...

    def apply(self, stx: SignedTransaction, leaf_index: int, token: Any) -> None: ...

    def load(self, store: LedgerStore) -> None:
        """Rebuild the rule's state from the store (at start and after a failed commit)."""


CommitListener = Callable[[BlockRecord, list[TxRecord]], None]


class Service(Protocol):
    """Something that runs beside a node (the contract runner) and stops before it."""

    def stop(self) -> None: ...


def _guarded(listener: CommitListener) -> CommitListener:
    def call(block: BlockRecord, records: list[TxRecord]) -> None:
        try:
            listener(block, records)
        except Exception:  # a listener's failure must never reach the writers
            logging.getLogger(__name__).exception("commit listener failed at %d", block.height)

    return call


@dataclass(slots=True)
class _Chunk:
    """A parsed chunk of ``submit_many`` whose signatures are being verified."""

    prepared: list[Pending | OpsledgerError]
    positions: list[int]  # where in ``prepared`` each verified signature belongs
    verdicts: Future[list[bool]]

    def done(self) -> bool:
        return self.verdicts.done()


def _tx_record(stx: SignedTransaction, leaf_index: int, height: int) -> TxRecord:
    tx = stx.tx
    return TxRecord(
        tx_id=stx.tx_id,
        leaf_index=leaf_index,
        height=height,
        type=tx.type,
        actor=tx.actor,
        subject_kind=tx.subject.kind,
        subject_id=tx.subject.id,
        ts=tx.ts,
        nonce=tx.nonce,
        leaf=stx.leaf,
    )


def _build_block(
    *,
    height: int,
    prev_hash: str,
    prev_time: str,
    txs: Sequence[SignedTransaction],
    tree: CompactRange,
    first_leaf: int,
    node_name: str,
    node_key: PrivateKey,
    clock: Clock,
    origin: str | None,
) -> tuple[BlockRecord, list[TxRecord], list[tuple[int, int, bytes]], CompactRange]:
    """Everything ``append_block`` stores for one block; ``tree`` is not modified."""
    hashes = [stx.leaf_hash for stx in txs]
    new_tree = tree.copy()
    nodes = new_tree.extend(hashes)
    header = BlockHeader(
        height=height,
        prev_hash=prev_hash,
        time=max(format_ts(clock.now()), prev_time),
        tx_ids=tuple(stx.tx_id for stx in txs),
        tx_root=root_of(hashes).hex(),
        log_size=new_tree.size,
        log_root=new_tree.root().hex(),
        proposer=node_name,
        key_id=node_key.key_id,
    )
    block = sign_block(header, node_key)
    origin = origin or origin_for(block.block_hash)
    note = sign_checkpoint(Checkpoint(origin, new_tree.size, new_tree.root()), node_name, node_key)
    record = BlockRecord(
        height=height,
        block_hash=block.block_hash,
        log_size=new_tree.size,
        log_root=header.log_root,
        time=header.time,
        data=block.to_bytes(),
        checkpoint=note,
    )
    tx_records = [_tx_record(stx, first_leaf + i, height) for i, stx in enumerate(txs)]
    return record, tx_records, nodes, new_tree


def create_genesis(
    store: LedgerStore,
    *,
    admin_name: str,
    admin_key: PrivateKey,
    node_name: str,
    node_key: PrivateKey,
    clock: Clock | None = None,
) -> str:
    """Write block 0: the admin adds itself (self-signed, the trust anchor), then the admin
    registers the node. Returns the genesis block hash, which names the ledger."""
    clock = clock or SystemClock()
    if store.head() is not None:
        raise InvalidInput("this store already holds a ledger")
    ts = format_ts(clock.now())
    base = int(clock.now().timestamp() * 1_000_000)

    def add(actor: str, key: PrivateKey, roles: list[str], kind: str, nonce: int) -> Transaction:
        return Transaction(
            type="identity.key_added",
            actor=admin_name,
            key_id=admin_key.key_id,
            ts=ts,
            nonce=nonce,
            subject=Subject("actor", actor),
            body={"actor": actor, "public_key": key.public_key.b64, "roles": roles, "kind": kind},
        )

    txs = [
        sign_transaction(add(admin_name, admin_key, ["admin"], "person", base), admin_key),
        sign_transaction(add(node_name, node_key, ["node"], "node", base + 1), admin_key),
    ]
    registry = Registry()
    for stx in txs:
        registry.admit(stx)
    record, tx_records, nodes, _ = _build_block(
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        prev_time="",
        txs=txs,
        tree=CompactRange.empty(),
        first_leaf=0,
        node_name=node_name,
        node_key=node_key,
        clock=clock,
        origin=None,
    )
    store.append_block(record, tx_records, nodes, {admin_name: base + 1})
    store.set_meta("genesis_hash", record.block_hash)
    store.set_meta("origin", origin_for(record.block_hash))
    store.set_meta("node_name", node_name)
    return record.block_hash


class LedgerNode:
    """One ledger node over one store. Thread-safe: submit and read from any thread."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        node_key: PrivateKey | None = None,
        clock: Clock | None = None,
        orderer: Orderer | None = None,
        checker: SignatureChecker | None = None,
        on_close: Callable[[], None] | None = None,
        rules: Sequence[AdmissionRule] = (),
    ) -> None:
        self.store = store
        self._on_close = on_close
        self.rules = tuple(rules)
        self._listeners: list[CommitListener] = []
        self.services: list[Service] = []
        self.clock = clock or SystemClock()
        self.checker = checker or SignatureChecker()
        genesis = store.get_meta("genesis_hash")
        origin = store.get_meta("origin")
        node_name = store.get_meta("node_name")
        if genesis is None or origin is None or node_name is None:
            raise NotFound("no ledger here: run `opsledger init` first")
        self.genesis_hash = genesis
        self.origin = origin
        # A fork (``opsledger fork``) signs its new checkpoints under its own origin, so
        # its history can never be mistaken for the original ledger's.
        self.checkpoint_origin = store.get_meta("fork_origin") or origin
        self.node_name = node_name
        self._node_key = node_key
        self._orderer = orderer or InProcessOrderer()
        self._lock = threading.Lock()  # guards head/tree/registry swaps for readers
        self._started = False
        self._load_state()

    # -- state --
    def _load_state(self) -> None:
        head = self.store.head()
        if head is None:
            raise StorageError("store has metadata but no genesis block")
        registry = Registry()
        cursor: int | None = None
        while True:
            page = self.store.query_txs(TxQuery(type="identity.*", after=cursor, limit=1000))
            for record in page:
                registry.apply(SignedTransaction.parse(record.leaf))
            if len(page) < 1000:
                break
            cursor = page[-1].leaf_index
        for actor, nonce in self.store.last_nonces().items():
            if actor in registry.actors:
                registry.actors[actor].last_nonce = nonce
        tree = CompactRange.from_nodes(head.log_size, self.store.get_nodes)
        if tree.root().hex() != head.log_root:
            raise StorageError(
                "stored tree nodes do not match the head block's log root",
                expected=head.log_root,
                computed=tree.root().hex(),
            )
        for rule in self.rules:
            rule.load(self.store)
        with self._lock:
            self.registry = registry
            self._tree = tree
            self._head = head

    @property
    def head(self) -> BlockRecord:
        """The latest durable block. A read-only node (never started) re-reads it from
        the store, so a long-lived reader beside a writer process is never stale."""
        if not self._started:
            current = self.store.head()
            if current is not None and current.height > self._head.height:
                self._head = current
        return self._head

    def start(self) -> LedgerNode:
        if self._node_key is None:
            raise InvalidInput("this node has no signing key: it can read but not write")
        if not self._started:
            self._orderer.start(self._deliver)
            self._started = True
        return self

    def attach(self, service: Service) -> None:
        """Run ``service`` with this node: it is stopped before the node closes."""
        self.services.append(service)

    def close(self) -> None:
        """Stop attached services, then the committer after it wrote what is queued;
        then run ``on_close``."""
        while self.services:
            self.services.pop().stop()
        if self._started:
            self._orderer.stop()
            self._started = False
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()

    def __enter__(self) -> LedgerNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- write path --
    def prepare(self, data: bytes | str | SignedTransaction) -> Pending:
        """Parse and schema-check; verify the signature now if the key is already known."""
        stx = data if isinstance(data, SignedTransaction) else SignedTransaction.parse(data)
        key = self.registry.known_key(stx.tx.key_id)
        verified = False
        if key is not None:
            if not stx.verify_signature(key):
                raise PermissionDenied("signature does not verify", field="sig")
            verified = True
        return Pending(stx, signature_verified=verified)

    def submit_async(self, data: bytes | str | SignedTransaction) -> Future[Receipt]:
        pending = self.prepare(data)
        self._orderer.submit([pending])
        return pending.future

    def submit(self, data: bytes | str | SignedTransaction, timeout: float = 30.0) -> Receipt:
        """Admit one transaction and wait until its block is durable."""
        future = self.submit_async(data)
        try:
            result: Receipt = future.result(timeout)
        except FutureTimeout:
            raise StorageError(
                f"not acknowledged within {timeout:g} s: the block is not known to be durable"
            ) from None
        return result

    def submit_many(
        self,
        items: Sequence[bytes | str | SignedTransaction],
        timeout: float = 120.0,
        *,
        chunk: int = 256,
    ) -> list[Receipt | OpsledgerError]:
        """Admit many; each item gets its receipt or its own error, in order.

        A pipeline over chunks of ``chunk`` items: this thread parses a chunk and starts
        the checker verifying its signatures, then parses the next one; every chunk
        whose signatures are done (in order) goes to the orderer at once, so the
        committer builds and stores blocks while later chunks are parsed and verified.
        Parsing and committing hold the GIL; libsodium's verify does not, so the
        checker's threads fill the other core. The last chunk is handed over with
        ``flush``: nothing follows it, so its block need not wait for more."""
        prepared: list[Pending | OpsledgerError] = []
        in_flight: deque[_Chunk] = deque()
        group = PendingGroup()
        starts = range(0, len(items), chunk)
        for start in starts:
            in_flight.append(self._start_chunk(items[start : start + chunk], group))
            while in_flight and in_flight[0].done():
                current = in_flight.popleft()
                last = start == starts[-1] and not in_flight
                prepared.extend(self._finish_chunk(current, flush=last))
        while in_flight:
            current = in_flight.popleft()
            prepared.extend(self._finish_chunk(current, flush=not in_flight))
        group.seal()
        group.wait(timeout)
        results: list[Receipt | OpsledgerError] = []
        for p in prepared:
            outcome = p if isinstance(p, OpsledgerError) else p.outcome
            if isinstance(outcome, Receipt | OpsledgerError):
                results.append(outcome)
            elif outcome is None:
                results.append(StorageError(f"not acknowledged within {timeout:g} s"))
            else:  # not ours to swallow (a bug, or the commit thread's MemoryError)
                raise outcome
        return results

    def _start_chunk(
        self, items: Sequence[bytes | str | SignedTransaction], group: PendingGroup
    ) -> _Chunk:
        """Parse ``items`` and start verifying the signatures whose keys are known."""
        prepared: list[Pending | OpsledgerError] = []
        positions: list[int] = []
        batch: list[tuple[PublicKey, bytes, bytes, bytes]] = []
        known_key = self.registry.known_key
        for position, raw in enumerate(items):
            try:
                stx = raw if isinstance(raw, SignedTransaction) else SignedTransaction.parse(raw)
            except OpsledgerError as exc:
                prepared.append(exc)
                continue
            prepared.append(Pending(stx, group=group))
            key = known_key(stx.tx.key_id)
            if key is not None:
                positions.append(position)
                batch.append((key, DOMAIN_TX, stx.message, stx.sig))
        return _Chunk(prepared, positions, self.checker.start(batch))

    def _finish_chunk(
        self, chunk: _Chunk, *, flush: bool = False
    ) -> list[Pending | OpsledgerError]:
        """Wait for the chunk's signatures, then hand what passed to the orderer."""
        prepared = chunk.prepared
        for position, ok in zip(chunk.positions, chunk.verdicts.result(), strict=True):
            item = prepared[position]
            if not isinstance(item, Pending):
                continue
            if ok:
                item.signature_verified = True
            else:
                error = PermissionDenied("signature does not verify", field="sig")
                item.fail(error)  # settles its place in the group
                prepared[position] = error
        pendings = [p for p in prepared if isinstance(p, Pending)]
        if pendings or flush:
            try:
                self._orderer.submit(pendings, flush=flush)
            except OpsledgerError as exc:
                # Not queued (the node is stopping): these fail alone; earlier chunks
                # were queued and get their own outcome, so no "nothing was written".
                for pending in pendings:
                    pending.fail(exc)
        return prepared

    def _deliver(self, batch: Sequence[Pending]) -> None:
        try:
            accepted, nonces = self._admit(batch)
        except BaseException:
            # A rule failed in an unexpected way after earlier transactions of this batch
            # were applied to the registry and rules: none of them will be stored, so the
            # in-memory state goes back to what the store holds (the orderer fails them).
            self._load_state()
            raise
        if accepted:
            self._commit(accepted, nonces)

    def _admit(self, batch: Sequence[Pending]) -> tuple[list[Pending], dict[str, int]]:
        """Admission in order; each refused transaction fails alone."""
        accepted: list[Pending] = []
        nonces: dict[str, int] = {}
        for pending in batch:
            if not pending.begin():
                continue  # the writer gave up before ordering: nothing to write
            if pending.stx.tx.ledger != self.checkpoint_origin:
                pending.fail(
                    PermissionDenied(
                        f"transaction is signed for ledger {pending.stx.tx.ledger or 'genesis'!r};"
                        f" this ledger is {self.checkpoint_origin!r}",
                        field="ledger",
                    )
                )
                continue
            try:
                self.registry.check(pending.stx, signature_verified=pending.signature_verified)
            except OpsledgerError as exc:
                pending.fail(exc)
                continue
            try:
                tokens = [rule.check(pending.stx) for rule in self.rules]
            except OpsledgerError as exc:
                pending.fail(exc)
                continue
            self.registry.apply(pending.stx)
            leaf_index = self._head.log_size + len(accepted)
            for rule, token in zip(self.rules, tokens, strict=True):
                rule.apply(pending.stx, leaf_index, token)
            nonces[pending.stx.tx.actor] = pending.stx.tx.nonce
            accepted.append(pending)
        return accepted, nonces

    def _commit(self, accepted: list[Pending], nonces: dict[str, int]) -> None:
        head = self._head
        assert self._node_key is not None
        try:
            record, tx_records, nodes, tree = _build_block(
                height=head.height + 1,
                prev_hash=head.block_hash,
                prev_time=head.time,
                txs=[p.stx for p in accepted],
                tree=self._tree,
                first_leaf=head.log_size,
                node_name=self.node_name,
                node_key=self._node_key,
                clock=self.clock,
                origin=self.checkpoint_origin,
            )
            self.store.append_block(record, tx_records, nodes, nonces)
        except BaseException as exc:
            error = (
                exc if isinstance(exc, OpsledgerError) else StorageError(f"commit failed: {exc}")
            )
            for pending in accepted:
                pending.fail(error)
            self._load_state()
            return
        with self._lock:
            self._tree = tree
            self._head = record
        # Listeners first: once a writer holds its receipt, whatever runs on commits (the
        # contract runner) already has the block, even if the writer closes the node next.
        for listener in self._listeners:
            listener(record, tx_records)
        for pending, tx in zip(accepted, tx_records, strict=True):
            pending.resolve(Receipt(tx.tx_id, tx.height, tx.leaf_index))

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Called in the committer thread after each durable block: keep it quick (queue
        the work); an exception there is logged, never fails the writers."""
        self._listeners.append(_guarded(listener))

    # -- reads --
    def get_tx(self, tx_id: str) -> TxRecord:
        record = self.store.get_tx(tx_id.lower())
        if record is None:
            raise NotFound(f"no transaction {tx_id}", field="tx_id")
        return record

    def query(self, query: TxQuery) -> list[TxRecord]:
        return self.store.query_txs(query)

    def block(self, height: int) -> BlockRecord:
        record = self.store.get_block(height)
        if record is None:
            raise NotFound(
                f"no block at height {height} (head is {self._head.height})", field="height"
            )
        return record

    def checkpoint(self, size: int | None = None) -> str:
        return self._block_at_size(size).checkpoint

    def _block_at_size(self, size: int | None) -> BlockRecord:
        if size is None:
            return self._head
        record = self.store.get_block_by_log_size(size)
        if record is None:
            raise NotFound(
                f"no checkpoint at tree size {size}: checkpoints are made at block boundaries"
                f" (current size {self._head.log_size})",
                field="size",
            )
        return record

    def inclusion_proof(self, tx_id: str, size: int | None = None) -> dict[str, Any]:
        record = self.get_tx(tx_id)
        block = self._block_at_size(size)
        if size is None and record.leaf_index >= block.log_size:
            # stored a moment ago, before this node swapped its head: use the store's head
            block = self.store.head() or block
        if record.leaf_index >= block.log_size:
            raise InvalidInput(
                f"transaction {tx_id} (leaf {record.leaf_index}) is not in the tree of size"
                f" {block.log_size}",
                field="size",
            )
        hashes = inclusion_proof(record.leaf_index, block.log_size, self.store.get_nodes)
        return {
            "tx_id": record.tx_id,
            "leaf_index": record.leaf_index,
            "tree_size": block.log_size,
            "leaf_hash": leaf_hash(record.leaf).hex(),
            "hashes": [h.hex() for h in hashes],
            "checkpoint": block.checkpoint,
        }

    def consistency_proof(self, first: int, second: int) -> dict[str, Any]:
        if not 0 < first <= second:
            raise InvalidInput("need 0 < first <= second", field="first")
        older = self._block_at_size(first)
        newer = self._block_at_size(second)
        hashes = consistency_proof(first, second, self.store.get_nodes)
        return {
            "first": first,
            "second": second,
            "hashes": [h.hex() for h in hashes],
            "first_checkpoint": older.checkpoint,
            "second_checkpoint": newer.checkpoint,
        }

    def verify(
        self, *, checker: SignatureChecker | None = None, progress: Any = None
    ) -> VerifyResult:
        """Re-check the whole stored ledger from genesis (see ``core.verify``)."""
        return verify_store(
            self.store,
            checker=checker or self.checker,
            progress=progress,
            genesis_hash=self.genesis_hash,
        )
