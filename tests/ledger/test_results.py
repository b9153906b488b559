"""One result per job run: the node's admission rule and verify's re-check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opsledger.client.base import Signer
from opsledger.client.http import error_from_body
from opsledger.core import AlreadyRecorded, SignedTransaction, Subject, VerificationFailed
from opsledger.ledger import LedgerNode, verify_store
from opsledger.ledger.results import JobResultRule
from opsledger.ordering import InProcessOrderer
from opsledger.store import SqliteStore
from opsledger.testing.factories import key_for

from .conftest import register


def _node(path: Path, *, rule: bool = True) -> LedgerNode:
    store = SqliteStore(path)
    store.initialize()
    return LedgerNode(
        store,
        node_key=key_for("node"),
        orderer=InProcessOrderer(max_batch=50),
        rules=[JobResultRule()] if rule else [],
        on_close=store.close,
    ).start()


def _result(
    ci: Signer, run: str, job: str, status: str = "success", **extra: Any
) -> SignedTransaction:
    subject = extra.pop("subject", Subject("run", run))
    body = {"run": run, "job": job, "status": status, "exit_code": 0 if status == "success" else 1}
    return ci.sign("job.finished", subject, body)


def test_a_second_result_for_a_job_run_is_refused_naming_the_first(
    db_path: Path, admin: Signer
) -> None:
    node = _node(db_path)
    try:
        ci = register(node, admin, "ci", ["ci"])
        first = _result(ci, "r1", "build")
        # the same job twice in one batch: the second is refused before any block is written
        results = node.submit_many([first, _result(ci, "r1", "build", "failure")])
        assert results[0].tx_id == first.tx_id  # type: ignore[union-attr]
        refused = results[1]
        assert isinstance(refused, AlreadyRecorded)
        assert refused.details["existing"] == first.tx_id
        # ...and once the first is stored, from the store
        with pytest.raises(AlreadyRecorded) as again:
            node.submit(_result(ci, "r1", "build"))
        assert again.value.details["existing"] == first.tx_id
        # other jobs, other runs and other subjects are results of their own
        node.submit(_result(ci, "r1", "test"))
        node.submit(_result(ci, "r2", "build"))
        node.submit(_result(ci, "r1", "build", subject=Subject("artifact", "sha256:" + "a" * 64)))
        size = node.head.log_size
    finally:
        node.close()
    reopened = _node(db_path)  # a restarted node knows the stored results
    try:
        with pytest.raises(AlreadyRecorded):
            reopened.submit(_result(ci, "r2", "build"))
        assert reopened.head.log_size == size
        assert reopened.verify().transactions == size
    finally:
        reopened.close()


def test_verify_finds_a_second_result_written_without_the_rule(
    db_path: Path, admin: Signer
) -> None:
    node = _node(db_path, rule=False)  # a node that did not apply the rule
    try:
        ci = register(node, admin, "ci", ["ci"])
        node.submit(_result(ci, "r1", "build"))
        node.submit(_result(ci, "r1", "deploy"))
        second = node.submit(_result(ci, "r1", "build", "failure"))
        store = node.store
        with pytest.raises(VerificationFailed) as failed:
            verify_store(store)
    finally:
        node.close()
    assert failed.value.details["tx_id"] == second.tx_id
    assert failed.value.details["height"] == second.height
    assert "second result for run r1 job build" in failed.value.message


def test_the_refusal_crosses_http_with_the_first_result() -> None:
    body = {"error": {"code": "already_recorded", "message": "taken", "existing": "ab" * 32}}
    error = error_from_body(409, body)
    assert isinstance(error, AlreadyRecorded)
    assert error.details["existing"] == "ab" * 32
