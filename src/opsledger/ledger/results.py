"""One result per job: the node refuses a second ``job.finished`` for the same job run.

The pipeline looks for a job's result before it writes one (``pipeline.evidence``), but the
look and the write are two calls. Two recorders of one job can exist when the queue
redelivers a job whose first worker was alive but silent past ``ack_wait``; against a
shared ``opsledger serve`` both could write. Only the node sees every write in order, so
the rule lives here, as an admission rule every node applies and ``verify`` re-checks:
a second ``job.finished`` with the same subject, ``body.run`` and ``body.job`` is refused
with ``AlreadyRecorded`` naming the first (``existing``), whether the first is stored or
was admitted a moment ago in a block not yet written.

The subject is part of the key because each producer has its own: pipeline runs write on
``run:<run id>``, jobs a contract requests on ``artifact:<digest>``. It also lets the
store's subject index find earlier results without reading the whole ledger.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from opsledger.core import AlreadyRecorded, SignedTransaction, VerificationFailed
from opsledger.core.encoding import parse_json
from opsledger.store import LedgerStore, TxQuery, TxRecord

__all__ = ["JobResultRule", "check_job_results"]

JOB_FINISHED = "job.finished"
_RECENT = 10_000  # far more than a block holds: older results are in the store by then


Key = tuple[str, str, str, str]  # subject kind, subject id, run, job


def _key(stx: SignedTransaction) -> Key:
    body = stx.tx.body
    return stx.tx.subject.kind, stx.tx.subject.id, str(body["run"]), str(body["job"])


def find_result(store: LedgerStore, key: Key, *, before: int | None = None) -> str | None:
    """The tx id of the stored ``job.finished`` for ``key``, if any; with ``before``, only
    among leaves before that index (the ledger as verify sees it at that point)."""
    kind, ident, run, job = key
    cursor = before
    while True:
        page = store.query_txs(
            TxQuery(
                type=JOB_FINISHED,
                subject_kind=kind,
                subject_id=ident,
                after=cursor,
                descending=before is not None,
                limit=200,
            )
        )
        for record in page:
            body = parse_json(record.leaf)["body"]
            if body.get("run") == run and body.get("job") == job:
                return record.tx_id
        if len(page) < 200:
            return None
        cursor = page[-1].leaf_index


class JobResultRule:
    """The admission rule (see the module docstring); ``LedgerNode`` calls it in log order."""

    def __init__(self) -> None:
        self._store: LedgerStore | None = None
        # results admitted by this node, newest last: the block holding them may not be
        # in the store yet when the next transaction is checked
        self._recent: OrderedDict[Key, str] = OrderedDict()

    def check(self, stx: SignedTransaction) -> Key | None:
        if stx.tx.type != JOB_FINISHED:
            return None
        key = _key(stx)
        existing = self._recent.get(key)
        if existing is None and self._store is not None:
            existing = find_result(self._store, key)
        if existing is not None:
            run, job = key[2], key[3]
            raise AlreadyRecorded(
                f"run {run} job {job} already has its result {existing}",
                field="body.job",
                existing=existing,
            )
        return key

    def apply(self, stx: SignedTransaction, leaf_index: int, token: object) -> None:
        if isinstance(token, tuple):
            self._recent[token] = stx.tx_id
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def load(self, store: LedgerStore) -> None:
        """Start over from the store (at open, and after a failed commit dropped the
        admitted-but-unwritten results)."""
        self._store = store
        self._recent.clear()


def check_job_results(
    store: LedgerStore,
    height: int,
    records: Sequence[TxRecord],
    parsed: Sequence[SignedTransaction],
) -> None:
    """``verify``: the rule again, over a verified block, against the leaves before each
    result (the store's index columns of earlier blocks were checked already)."""
    seen: dict[Key, str] = {}
    for record, stx in zip(records, parsed, strict=True):
        if stx.tx.type != JOB_FINISHED:
            continue
        key = _key(stx)
        first = seen.get(key) or find_result(store, key, before=record.leaf_index)
        if first is not None:
            raise VerificationFailed(
                f"block {height}: second result for run {key[2]} job {key[3]} on "
                f"{key[0]}:{key[1]} (the first is {first})",
                height=height,
                tx_id=record.tx_id,
            )
        seen[key] = record.tx_id
