"""The background recorder puts service evidence on the ledger without holding it."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsledger.app import Home
from opsledger.core import SchemaError, Subject


def test_records_land_in_order_and_the_lock_stays_free(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init(admin="alice")
    recorder = home.recorder()
    try:
        for i in range(5):
            recorder.record("note", Subject("service", "gw"), {"text": f"event {i}"})
        recorder.flush()
        # between batches nobody holds the writer lock: another writer gets in at once
        other = home.client()
        other.close()
    finally:
        recorder.close()
    client = home.client()
    try:
        rows = client.list_transactions({"type": "note", "subject": "service:gw"})
    finally:
        client.close()
    assert [row["transaction"]["body"]["text"] for row in rows] == [f"event {i}" for i in range(5)]
    assert recorder.errors == []


def test_a_bad_record_fails_in_the_caller_and_queues_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init(admin="alice")
    recorder = home.recorder()
    try:
        with pytest.raises(SchemaError):
            recorder.record("note", Subject("service", "gw"), {"txt": "no text field"})
        recorder.flush()
    finally:
        recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.record("note", Subject("service", "gw"), {"text": "late"})


def test_a_nonce_collision_with_another_writer_is_re_signed_not_dropped(tmp_path: Path) -> None:
    """Services record as the node, and so does the contract runner beside them: when the
    other writer's later nonces land first, the queued records are refused as replays.
    The recorder re-signs them past the ledger's last nonce instead of dropping them."""
    home = Home(tmp_path / "h")
    home.init(admin="alice")
    node = home.config().node
    recorder = home.recorder(node)
    queued = [
        recorder._signer.sign("note", Subject("service", "gw"), {"text": f"queued {i}"})
        for i in range(3)
    ]
    other = home.signer(node)  # another writer for the same actor, signing later
    client = home.client()
    try:
        client.submit(other.sign("note", Subject("service", "gw"), {"text": "other"}))
    finally:
        client.close()
    try:
        for stx in queued:  # signed before the other writer's, submitted after it
            recorder._queue.put(stx)
        recorder.flush()
    finally:
        recorder.close()
    client = home.client()
    try:
        rows = client.list_transactions({"type": "note", "subject": "service:gw"})
    finally:
        client.close()
    texts = [row["transaction"]["body"]["text"] for row in rows]
    assert texts == ["other", "queued 0", "queued 1", "queued 2"]
    assert recorder.errors == []
