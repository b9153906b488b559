"""Verify everything a store holds: the ledger itself (``core.verify``), the index
columns against the signed bytes, contract deployments, and every recorded verdict
re-executed from the evidence it could see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from opsledger.contracts import ContractBook
from opsledger.core import (
    Block,
    LedgerVerifier,
    OpsledgerError,
    Registry,
    SignatureChecker,
    SignedTransaction,
    StorageError,
    VerificationFailed,
    VerifyResult,
    canonical,
    parse_json,
)
from opsledger.core.verify import PreparedBlock
from opsledger.ledger.contracts import StoreEvidence, evaluate_trigger
from opsledger.ledger.results import check_job_results
from opsledger.store import BlockRecord, LedgerStore, TxQuery, TxRecord

__all__ = ["check_deployments", "iter_store_blocks", "verify_contracts", "verify_store"]

PAGE = 1000


def iter_store_blocks(
    store: LedgerStore, start: int = 0, end: int | None = None
) -> Iterator[tuple[BlockRecord, list[TxRecord]]]:
    """Blocks with their transaction records, in order, streaming both tables."""
    previous = store.get_block(start - 1) if start > 0 else None
    prev_size = previous.log_size if previous is not None else 0
    prev_height = start - 1
    txs = store.iter_txs(prev_size)
    for block in store.iter_blocks(start, end):
        if type(block.height) is not int or type(block.log_size) is not int:
            height = block.height if type(block.height) is int else prev_height + 1
            raise VerificationFailed(
                f"block {height}: stored data is malformed: height or log_size is not an integer",
                height=height,
            )
        prev_height = block.height
        count = block.log_size - prev_size
        if count < 0:
            raise VerificationFailed(
                f"block {block.height}: log_size goes backwards", height=block.height
            )
        records = []
        for _ in range(count):
            record = next(txs, None)
            if record is None:
                raise VerificationFailed(
                    f"block {block.height}: the store is missing transactions",
                    height=block.height,
                )
            records.append(record)
        prev_size = block.log_size
        yield block, records


def _check_columns(
    block: BlockRecord, records: Sequence[TxRecord], parsed: Sequence[SignedTransaction]
) -> None:
    """The store's index columns must say what the signed bytes say (a tampered column
    would make queries lie even though the leaves verify)."""
    header = Block.from_bytes(block.data).header
    if (block.block_hash, block.log_size, block.log_root, block.time) != (
        header.block_hash,
        header.log_size,
        header.log_root,
        header.time,
    ):
        raise VerificationFailed(
            f"block {block.height}: stored columns disagree with the signed block",
            height=block.height,
        )
    first = header.log_size - len(records)
    for i, (record, stx) in enumerate(zip(records, parsed, strict=True)):
        tx = stx.tx
        expected = (
            stx.tx_id,
            first + i,
            block.height,
            tx.type,
            tx.actor,
            tx.subject.kind,
            tx.subject.id,
            tx.ts,
            tx.nonce,
        )
        stored = (
            record.tx_id,
            record.leaf_index,
            record.height,
            record.type,
            record.actor,
            record.subject_kind,
            record.subject_id,
            record.ts,
            record.nonce,
        )
        if expected != stored:
            raise VerificationFailed(
                f"block {block.height}: stored index columns of {record.tx_id} disagree with"
                " its signed bytes",
                height=block.height,
                tx_id=record.tx_id,
            )


def verify_store(
    store: LedgerStore,
    *,
    checker: SignatureChecker | None = None,
    progress: Any = None,
    genesis_hash: str | None = None,
) -> VerifyResult:
    """Verify everything a store holds: the ledger (``core.verify``), the index columns
    against the signed bytes, contract deployment rules in log order, and then every
    recorded verdict re-executed (``verify_contracts``)."""
    fork_height = store.get_meta("fork_height")
    verifier = LedgerVerifier(
        genesis_hash=genesis_hash,
        checker=checker,
        fork_origin=store.get_meta("fork_origin"),
        fork_height=int(fork_height) if fork_height is not None else None,
    )
    book = ContractBook()

    def check(block: BlockRecord, records: list[TxRecord], prepared: PreparedBlock) -> None:
        try:
            parsed = verifier.add_block(
                block.data, prepared.leaves, block.checkpoint, prepared=prepared
            )
            _check_columns(block, records, parsed)
            _check_tree_nodes(store, block.height, verifier.last_nodes)
            check_deployments(book, block.height, records, parsed)
            check_job_results(store, block.height, records, parsed)
        except OpsledgerError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:  # a column of the wrong kind
            raise VerificationFailed(
                f"block {block.height}: stored data is malformed: {exc}", height=block.height
            ) from exc
        if progress is not None:
            progress(block.height, block.log_size)

    # Two blocks in flight: block k+1 is read, parsed and its signatures handed to the
    # checker before block k is checked, so the checker verifies while this thread works.
    # Whatever goes wrong reading block k+1 is raised only after block k passed: the
    # first bad block is always the one reported.
    previous: tuple[BlockRecord, list[TxRecord], PreparedBlock] | None = None
    # The head when verify starts bounds the walk: a node may keep writing meanwhile, and
    # what it adds is for the next verify (the checks after the walk allow for it).
    head = store.head()
    blocks = iter_store_blocks(store, 0, None if head is None else head.height + 1)
    while True:
        try:
            block, records = next(blocks)
        except StopIteration:
            break
        except Exception:
            if previous is not None:
                check(*previous)
            raise
        try:
            prepared = verifier.prepare([r.leaf for r in records])
        except (TypeError, ValueError, AttributeError) as exc:  # a leaf of the wrong kind
            if previous is not None:
                check(*previous)
            raise VerificationFailed(
                f"block {block.height}: stored data is malformed: {exc}", height=block.height
            ) from exc
        if previous is not None:
            check(*previous)
        previous = (block, records, prepared)
    if previous is not None:
        check(*previous)
    result = verifier.result()
    _check_reached(head, result)
    _check_tail_and_nonces(store, result, verifier.registry)
    problem = store.check_integrity()
    if problem is not None:
        raise VerificationFailed(problem, reason=problem)
    verify_contracts(store, book, StoreEvidence(store, verifier.registry), below=result.log_size)
    return result


def _check_tree_nodes(
    store: LedgerStore, height: int, nodes: Sequence[tuple[int, int, bytes]]
) -> None:
    """The tree nodes the store keeps for a block (which proofs are built from) must be
    the ones its leaves give; a wrong one would surface only when a proof is asked for."""
    if not nodes:
        return
    try:
        stored = store.get_nodes([(level, index) for level, index, _ in nodes])
    except StorageError as exc:
        raise VerificationFailed(f"block {height}: {exc.message}", height=height) from exc
    for (level, index, expected), found in zip(nodes, stored, strict=True):
        if found != expected:
            raise VerificationFailed(
                f"block {height}: stored Merkle tree node (level {level}, index {index}) is "
                "not the one its leaves give",
                height=height,
                level=level,
                index=index,
            )


def _check_reached(head: BlockRecord | None, result: VerifyResult) -> None:
    """The walk must reach the head the store had when verify started: a damaged page can
    end it early, which must not pass as a shorter ledger."""
    if head is None or (head.height, head.log_size) != (result.height, result.log_size):
        shown = "none" if head is None else f"block {head.height} of {head.log_size} txs"
        raise VerificationFailed(
            f"block {result.height + 1}: the blocks stop at {result.height} but the store's "
            f"head is {shown}: a block is missing or unreadable",
            height=result.height + 1,
        )


def _check_tail_and_nonces(store: LedgerStore, result: VerifyResult, registry: Registry) -> None:
    """No transaction may lie past the head (it would shift every later write's leaf
    index), and the stored last nonces, which admission trusts, must be what the ledger
    says (a lowered one would admit a replay).

    A node may be writing while verify runs, and each read sees the latest commit. A block
    stores its transactions and nonces in one commit and heights only grow, so reads taken
    between two reads of the same head saw one state; a few tries find such a state. If
    the ledger has moved past the verified blocks, stored nonces can only be higher than
    the ledger said at the end of the walk, never lower."""
    for _ in range(5):
        before = store.head()
        count = store.count_txs()
        nonces = store.last_nonces()
        if store.head() == before:
            break
    else:  # writes never paused: only what holds at any later moment is checked
        _check_nonces(nonces, registry, moved=True)
        return
    if before is not None and count != before.log_size:
        raise VerificationFailed(
            f"block {before.height}: the store holds transactions past the last block "
            f"(leaf indexes up to {count - 1}, the log has {before.log_size})",
            height=before.height,
        )
    _check_nonces(nonces, registry, moved=before is None or before.height != result.height)


def _check_nonces(stored: dict[str, int], registry: Registry, *, moved: bool) -> None:
    expected = {name: a.last_nonce for name, a in registry.actors.items() if a.last_nonce >= 0}
    actors = sorted(expected) if moved else sorted(stored.keys() | expected.keys())
    for actor in actors:
        found, said = stored.get(actor), expected.get(actor)
        wrong = (found is None or said is None or found < said) if moved else found != said
        if wrong:
            raise VerificationFailed(
                f"the stored last nonce of actor {actor!r} is {found}; the ledger says {said}",
                actor=actor,
            )


def check_deployments(
    book: ContractBook,
    height: int,
    records: Sequence[TxRecord],
    parsed: Sequence[SignedTransaction],
) -> None:
    """Apply the deployment rule to a verified block's transactions, in log order."""
    for record, stx in zip(records, parsed, strict=True):
        if stx.tx.type != "contract.deployed":
            continue
        try:
            contract = book.check(stx)
        except OpsledgerError as exc:
            raise VerificationFailed(
                f"block {height}: contract deployment was not admissible: {exc.message}",
                height=height,
                tx_id=record.tx_id,
            ) from exc
        book.apply(stx, record.leaf_index, contract)


_VERDICT_KEYS = ("contract", "version", "trigger", "request", "result", "requirements")


def verify_contracts(
    store: LedgerStore, book: ContractBook, evidence: StoreEvidence, *, below: int | None = None
) -> int:
    """Re-execute every recorded ``contract.verdict`` and compare; returns how many.

    A verdict must name the contract version in force at its trigger, and its result,
    requirements, reasons and cited evidence must be exactly what re-execution gives.
    ``below``: only verdicts at leaf indexes under it, the part of the log verified (a
    node may be writing more; ``book`` and ``evidence`` know only the verified part).
    """
    checked = 0
    after: int | None = None
    while True:
        page = store.query_txs(TxQuery(type="contract.verdict", after=after, limit=PAGE))
        for record in page:
            if below is not None and record.leaf_index >= below:
                return checked
            _check_verdict(store, book, evidence, record)
            checked += 1
        if len(page) < PAGE:
            return checked
        after = page[-1].leaf_index


def _check_verdict(
    store: LedgerStore, book: ContractBook, evidence: StoreEvidence, record: TxRecord
) -> None:
    body = parse_json(record.leaf)["body"]

    def fail(reason: str) -> VerificationFailed:
        return VerificationFailed(
            f"block {record.height}: verdict {record.tx_id}: {reason}",
            height=record.height,
            tx_id=record.tx_id,
            reason=reason,
        )

    trigger = store.get_tx(body["trigger"])
    if trigger is None or trigger.leaf_index >= record.leaf_index:
        raise fail("its trigger is not an earlier transaction of this ledger")
    deployment = book.in_force(body["contract"], trigger.leaf_index)
    if deployment is None or deployment.contract.version != body["version"]:
        raise fail(
            f"{body['contract']}@{body['version']} was not the version in force at its trigger"
        )
    block = store.get_block(trigger.height)
    assert block is not None
    evaluation = next(
        (
            e
            for e in evaluate_trigger(book, evidence, trigger, block.time)
            if e.body["contract"] == body["contract"]
        ),
        None,
    )
    if evaluation is None:
        raise fail("re-execution finds that the contract does not apply to its trigger")
    expected = evaluation.body
    recorded = {key: body.get(key) for key in _VERDICT_KEYS}
    if canonical(recorded) != canonical(expected):
        raise fail(_difference(recorded, expected))
    recorded_types = {spec.type for d in book.all() for spec in d.contract.records}
    _check_records(store, record, list(evaluation.records), recorded_types, fail)


def _check_records(
    store: LedgerStore,
    verdict: TxRecord,
    expected: list[tuple[str, dict[str, Any]]],
    recorded_types: set[str],
    fail: Any,
) -> None:
    """What the node recorded after the verdict (an ``sla.violation``...) must be exactly
    what the contract says to record: each refs the verdict, on the verdict's subject."""
    found: list[tuple[str, dict[str, Any]]] = []
    for tx_type in sorted(recorded_types):
        for candidate in store.query_txs(
            TxQuery(
                type=tx_type,
                subject_kind=verdict.subject_kind,
                subject_id=verdict.subject_id,
                after=verdict.leaf_index,
                limit=100,
            )
        ):
            tx = parse_json(candidate.leaf)
            if verdict.tx_id in tx["refs"]:
                found.append((tx_type, tx["body"]))
    if sorted(map(canonical, found)) != sorted(map(canonical, expected)):
        raise fail(
            f"it should be followed by {[t for t, _ in expected] or 'nothing'} as the contract"
            f" records, found {[t for t, _ in found] or 'nothing'} (or with other figures)"
        )


def _difference(recorded: dict[str, Any], expected: dict[str, Any]) -> str:
    """Say which part of a recorded verdict re-execution disagrees with."""
    if recorded["result"] != expected["result"]:
        return f"recorded result {recorded['result']} but re-execution gives {expected['result']}"
    by_name = {r["name"]: r for r in expected["requirements"]}
    for requirement in recorded["requirements"] or []:
        other = by_name.get(requirement.get("name"))
        if other != requirement:
            return (
                f"requirement {requirement.get('name')!r} differs from re-execution"
                f" (recorded {requirement.get('result')}: {requirement.get('reason')!r};"
                f" re-executed {other['result'] if other else 'absent'}:"
                f" {other['reason'] if other else ''!r})"
            )
    return "the recorded verdict differs from re-execution"
