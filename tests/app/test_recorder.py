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
