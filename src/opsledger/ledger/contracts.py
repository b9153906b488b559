"""Contracts on a node: the deployment rule, evidence from the store, and the runner that
evaluates every trigger after its block is durable and records the verdict.

Determinism: evidence is only what lies at or before the trigger's leaf, the time is the
trigger's block time, and an actor's roles are fixed when the actor is registered (the
registry has no way to change them), so ``verify`` re-executes every verdict from the
store alone and must reach the same body.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from opsledger.contracts import ContractBook, Evaluation, evaluate, evidence_item
from opsledger.contracts.book import Deployment
from opsledger.core import (
    Registry,
    ReplayRejected,
    SignedTransaction,
    Subject,
    parse_json,
)
from opsledger.store import BlockRecord, LedgerStore, TxQuery, TxRecord

__all__ = [
    "ContractRule",
    "ContractRunner",
    "StoreEvidence",
    "VerdictListener",
    "evaluate_trigger",
    "load_book",
]

log = logging.getLogger(__name__)
PAGE = 1000


def load_book(store: LedgerStore) -> ContractBook:
    """Every deployment in log order (each was checked when it was admitted)."""
    book = ContractBook()
    after: int | None = None
    while True:
        page = store.query_txs(TxQuery(type="contract.deployed", after=after, limit=PAGE))
        for record in page:
            book.apply(SignedTransaction.parse(record.leaf), record.leaf_index)
        if len(page) < PAGE:
            return book
        after = page[-1].leaf_index


class ContractRule:
    """The node's admission rule for ``contract.deployed`` (see ``ContractBook.check``)."""

    def __init__(self) -> None:
        self.book = ContractBook()

    def check(self, stx: SignedTransaction) -> Any:
        return self.book.check(stx)

    def apply(self, stx: SignedTransaction, leaf_index: int, token: Any) -> None:
        self.book.apply(stx, leaf_index, token)

    def load(self, store: LedgerStore) -> None:
        self.book = load_book(store)


class StoreEvidence:
    """``EvidenceSource`` over a store: indexed, bounded, newest first."""

    def __init__(self, store: LedgerStore, registry: Registry, *, cache: int = 20_000) -> None:
        self.store = store
        self.registry = registry
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache = cache

    def item(self, record: TxRecord) -> dict[str, Any]:
        """The evidence item of a stored transaction. Leaves were checked canonical when
        admitted (and again by verify), so the plain C parser suffices; items are kept
        (an LRU by tx id): the same recent evidence serves verdict after verdict."""
        found = self._items.get(record.tx_id)
        if found is not None:
            self._items.move_to_end(record.tx_id)
            return found
        actor = self.registry.actors.get(record.actor)
        item = evidence_item(
            tx_id=record.tx_id,
            leaf_index=record.leaf_index,
            tx=json.loads(record.leaf),
            roles=actor.roles if actor is not None else (),
        )
        self._items[record.tx_id] = item
        if len(self._items) > self._cache:
            self._items.popitem(last=False)
        return item

    def find(
        self, *, tx_type: str, subject: tuple[str, str] | None, before_leaf: int, limit: int
    ) -> list[dict[str, Any]]:
        records = self.store.query_txs(
            TxQuery(
                type=tx_type,
                subject_kind=subject[0] if subject else None,
                subject_id=subject[1] if subject else None,
                after=before_leaf,
                descending=True,
                limit=limit,
            )
        )
        return [self.item(r) for r in records]


def evaluate_trigger(
    book: ContractBook, evidence: StoreEvidence, record: TxRecord, block_time: str
) -> list[Evaluation]:
    """Every verdict due for one committed transaction, in contract-name order."""
    if record.type not in book.trigger_types:
        return []
    trigger = evidence.item(record)
    results = []
    for deployment in book.triggered_by(record.type, record.leaf_index):
        evaluation = evaluate(deployment.contract, trigger, source=evidence, now=block_time)
        if evaluation is not None:
            results.append(evaluation)
    return results


VerdictListener = Callable[[Evaluation, str], None]
"""Called with an evaluation and the recorded verdict's tx id (notifications, jobs)."""


class ContractRunner:
    """Evaluates triggers off the commit path and records verdicts signed by the node.

    Blocks are queued by the node's commit listener and handled in order by one thread,
    so ingest never waits for contract evaluation. ``catch_up`` finds triggers that a
    crash left without a verdict.
    """

    def __init__(self, node: Any, rule: ContractRule, signer: Any) -> None:
        self.node = node
        self.rule = rule
        self.signer = signer
        self.listeners: list[VerdictListener] = []
        self._queue: queue.Queue[tuple[BlockRecord, list[TxRecord]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._seen: set[str] = set()  # triggers handled: catch-up and listener may overlap
        # Subjects that have a request (e.g. a release.requested), per request type: most
        # build.finished/test.finished triggers have none and are dropped here, in the
        # committer thread, without parsing a leaf or querying the store.
        self._requests: set[tuple[str, str, str]] = set()
        self._requests_loaded = False
        self._evidence: StoreEvidence | None = None

    def start(self) -> ContractRunner:
        self.node.add_commit_listener(self._enqueue)
        self._thread = threading.Thread(target=self._run, name="contracts", daemon=True)
        self._thread.start()
        self.catch_up()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued block was evaluated and recorded (tests, CLI). Uses the
        queue's own count of unfinished work, so a block queued at any moment is seen."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def _enqueue(self, block: BlockRecord, records: list[TxRecord]) -> None:
        relevant = self._relevant(records)
        if relevant:
            self._queue.put((block, relevant))

    def _relevant(self, records: list[TxRecord]) -> list[TxRecord]:
        book = self.rule.book
        request_types = {d.contract.request for d in book.all() if d.contract.request is not None}
        if not self._requests_loaded:
            self._load_requests(request_types)
        for r in records:
            if r.type in request_types:
                self._requests.add((r.type, r.subject_kind, r.subject_id))
        trigger_types = book.trigger_types
        # No deployment inside this block: every leaf of it sees the same contracts in
        # force, so look them up once per type (they were ~5% of the commit thread).
        same_for_block = bool(records) and book.newest_leaf() < records[0].leaf_index
        in_force: dict[str, list[Deployment]] = {}
        relevant = []
        for r in records:
            if r.type not in trigger_types:
                continue
            deployments = in_force.get(r.type) if same_for_block else None
            if deployments is None:
                deployments = book.triggered_by(r.type, r.leaf_index)
                in_force[r.type] = deployments
            for deployment in deployments:
                request = deployment.contract.request
                if (
                    request is None
                    or request == r.type
                    or (request, r.subject_kind, r.subject_id) in self._requests
                ):
                    relevant.append(r)
                    break
        return relevant

    def _load_requests(self, request_types: set[str]) -> None:
        for tx_type in request_types:
            after: int | None = None
            while True:
                page = self.node.store.query_txs(TxQuery(type=tx_type, after=after, limit=PAGE))
                self._requests.update((r.type, r.subject_kind, r.subject_id) for r in page)
                if len(page) < PAGE:
                    break
                after = page[-1].leaf_index
        self._requests_loaded = True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                block, records = item
                self._process(block, records)
            except Exception:
                log.exception("contract evaluation failed")
            finally:
                self._queue.task_done()

    def _process(self, block: BlockRecord, records: list[TxRecord]) -> None:
        if self._evidence is None:
            self._evidence = StoreEvidence(self.node.store, self.node.registry)
        evaluations = []
        for record in records:
            if record.tx_id in self._seen:
                continue
            self._seen.add(record.tx_id)
            evaluations.extend(evaluate_trigger(self.rule.book, self._evidence, record, block.time))
        if evaluations:
            self._record(evaluations)

    def _record(self, evaluations: list[Evaluation]) -> None:
        """Record a block's verdicts together (one block, one wait), then what each
        verdict records, citing it. Records go only after their verdict is on the ledger,
        so none can cite a verdict that was refused. A transaction refused as a replay
        (another writer signing as the node took a later nonce first: services record as
        the node too) is re-signed once past the ledger's last nonce instead of being
        lost until the next restart's catch-up."""
        sent = [
            (evaluation, verdict, self.node.submit_async(verdict))
            for evaluation in evaluations
            for verdict in [self._sign_verdict(evaluation)]
        ]
        recorded = []
        for evaluation, first, future in sent:
            try:
                verdict = self._settle(first, future, partial(self._sign_verdict, evaluation))
                subject, tx_id = verdict.tx.subject, verdict.tx_id
                records = [
                    self.signer.sign(tx_type, subject, body, [tx_id])
                    for tx_type, body in evaluation.records
                ]
                pending = [(record, self.node.submit_async(record)) for record in records]
                recorded.append((evaluation, tx_id, pending))
            except Exception:
                log.exception("could not record the verdict of %s", evaluation.body["contract"])
        for evaluation, tx_id, pending in recorded:
            try:
                for record, future in pending:
                    self._settle(record, future, partial(self._resign, record))
            except Exception:
                log.exception("could not record what %s records", evaluation.body["contract"])
                continue
            for listener in self.listeners:
                try:
                    listener(evaluation, tx_id)
                except Exception:
                    log.exception("verdict listener failed")

    def _sign_verdict(self, evaluation: Evaluation) -> SignedTransaction:
        request = evaluation.request
        subject = Subject(request["subject"]["kind"], request["subject"]["id"])
        refs = list(dict.fromkeys([evaluation.body["trigger"], evaluation.body["request"]]))
        verdict: SignedTransaction = self.signer.sign(
            "contract.verdict", subject, evaluation.body, refs
        )
        return verdict

    def _resign(self, stx: SignedTransaction) -> SignedTransaction:
        tx = stx.tx
        again: SignedTransaction = self.signer.sign(tx.type, tx.subject, tx.body, tx.refs)
        return again

    def _settle(
        self,
        stx: SignedTransaction,
        future: Future[Any],
        resign: Callable[[], SignedTransaction],
    ) -> SignedTransaction:
        """Wait for ``stx``; after a nonce collision, re-sign it once and wait again.
        Returns the transaction that is on the ledger."""
        try:
            future.result(60.0)
            return stx
        except ReplayRejected:
            last = self.node.registry.actor(self.signer.actor).last_nonce
            self.signer.bump_past(max(last, stx.tx.nonce))
            again = resign()
            self.node.submit(again)
            return again

    def catch_up(self) -> None:
        """Evaluate triggers after the newest verdict's trigger that have no verdict."""
        store = self.node.store
        verdicts = store.query_txs(TxQuery(type="contract.verdict", descending=True, limit=1))
        start = 0
        if verdicts:
            last = parse_json(verdicts[0].leaf)["body"]["trigger"]
            trigger = store.get_tx(last)
            start = trigger.leaf_index + 1 if trigger is not None else 0
        done = self._verdicts_since(start)
        pending: dict[int, tuple[BlockRecord, list[TxRecord]]] = {}
        trigger_types = self.rule.book.trigger_types
        for record in store.iter_txs(start):
            if record.type not in trigger_types or record.tx_id in done:
                continue
            if record.height not in pending:
                block = store.get_block(record.height)
                if block is None:
                    continue
                pending[record.height] = (block, [])
            pending[record.height][1].append(record)
        self._requests_loaded = False  # contracts may have been deployed since
        for height in sorted(pending):
            block, records = pending[height]
            relevant = self._relevant(records)
            if relevant:
                self._queue.put((block, relevant))

    def _verdicts_since(self, start: int) -> set[str]:
        triggers: set[str] = set()
        after = start - 1 if start > 0 else None
        while True:
            page = self.node.store.query_txs(
                TxQuery(type="contract.verdict", after=after, limit=PAGE)
            )
            triggers.update(parse_json(r.leaf)["body"]["trigger"] for r in page)
            if len(page) < PAGE:
                return triggers
            after = page[-1].leaf_index
