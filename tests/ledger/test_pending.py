"""``Pending`` and ``PendingGroup``: how a writer learns its transaction's outcome."""

from __future__ import annotations

import threading

import pytest

from opsledger.client.base import Signer
from opsledger.core import PermissionDenied, Receipt, SignedTransaction, Subject
from opsledger.ordering import Pending, PendingGroup
from opsledger.testing.factories import key_for


def _stx(text: str = "x") -> SignedTransaction:
    return Signer("alice", key_for("alice"), ledger="opsledger/" + "0" * 32).sign(
        "note", Subject("ticket", "1"), {"text": text}
    )


def test_a_lone_pending_settles_its_future() -> None:
    ok, bad = Pending(_stx("a")), Pending(_stx("b"))
    assert ok.begin() and bad.begin()
    ok.resolve(Receipt("t", 1, 2))
    bad.fail(PermissionDenied("no"))
    assert ok.future.result(0) == Receipt("t", 1, 2)
    with pytest.raises(PermissionDenied):
        bad.future.result(0)
    assert ok.done() and bad.done()


def test_a_cancelled_future_is_not_begun() -> None:
    pending = Pending(_stx())
    assert pending.future.cancel()
    assert not pending.begin()


def test_the_group_waits_for_every_member_then_wakes() -> None:
    group = PendingGroup()
    members = [Pending(_stx(str(i)), group=group) for i in range(3)]
    group.seal()
    assert not group.wait(0)
    members[0].resolve(Receipt("a", 1, 0))
    members[1].fail(PermissionDenied("no"))
    assert not group.wait(0)
    assert not members[2].done()

    settled = threading.Thread(target=members[2].resolve, args=(Receipt("c", 1, 2),))
    settled.start()
    settled.join()  # the last member settled on another thread: the group is done now
    assert group.wait(0)
    assert [type(m.outcome) for m in members] == [Receipt, PermissionDenied, Receipt]
    assert all(m.done() for m in members)


def test_an_unsealed_group_does_not_wake_between_members() -> None:
    """Chunks join while earlier ones settle: the wait ends only after ``seal``."""
    group = PendingGroup()
    first = Pending(_stx("1"), group=group)
    first.resolve(Receipt("a", 1, 0))
    assert not group.wait(0)
    Pending(_stx("2"), group=group).resolve(Receipt("b", 1, 1))
    group.seal()
    assert group.wait(0)


def test_an_empty_sealed_group_is_done() -> None:
    group = PendingGroup()
    group.seal()
    assert group.wait(0)


def test_a_group_member_has_no_future() -> None:
    member = Pending(_stx(), group=PendingGroup())
    assert member.begin()
    with pytest.raises(TypeError):
        _ = member.future
