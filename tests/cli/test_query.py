"""Reading: ``log``, ``show``, ``block``, ``checkpoint``, ``head`` and ``proof``."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from opsledger.app import Home
from opsledger.cli._state import Consoles
from opsledger.core import (
    InvalidInput,
    ProofError,
    PublicKey,
    b64decode,
    leaf_hash,
    open_checkpoint,
    parse_checkpoint,
    sha256_hex,
    verify_consistency,
    verify_inclusion,
)
from opsledger.core.tx import normalize_time

from .conftest import Ledger, fails, ok, ok_json, run


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_json_lines_are_tx_views(ledger: Ledger) -> None:
    views = _lines(ok(ledger.path, "log", "--json").stdout)
    assert [v["leaf_index"] for v in views] == list(range(22))
    for view in views:
        assert set(view) == {"tx_id", "leaf_index", "height", "leaf", "transaction"}
        assert sha256_hex(b64decode(view["leaf"])) == view["tx_id"]


def test_log_filters_and_paging(ledger: Ledger) -> None:
    notes = _lines(ok(ledger.path, "log", "--json", "--type", "note").stdout)
    assert len(notes) == 20
    assert all(v["transaction"]["type"] == "note" for v in notes)
    assert len(_lines(ok(ledger.path, "log", "--json", "--type", "identity.*").stdout)) == 2
    assert len(_lines(ok(ledger.path, "log", "--json", "--actor", "node").stdout)) == 0
    one = _lines(ok(ledger.path, "log", "--json", "--subject", "ticket:T-1-3").stdout)
    assert [v["transaction"]["body"]["text"] for v in one] == ["note 1.3"]
    assert len(_lines(ok(ledger.path, "log", "--json", "--subject", "ticket").stdout)) == 20
    page = _lines(ok(ledger.path, "log", "--json", "--limit", "5", "--after", "10").stdout)
    assert [v["leaf_index"] for v in page] == [11, 12, 13, 14, 15]
    newest = _lines(ok(ledger.path, "log", "--json", "--desc", "--limit", "3").stdout)
    assert [v["leaf_index"] for v in newest] == [21, 20, 19]


def test_log_pages_past_the_store_page_size(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("opsledger.cli.query.PAGE", 4)
    views = _lines(ok(ledger.path, "log", "--json", "--limit", "10", "--after", "3").stdout)
    assert [v["leaf_index"] for v in views] == list(range(4, 14))


def test_log_time_window(ledger: Ledger) -> None:
    views = _lines(ok(ledger.path, "log", "--json").stdout)
    ts = views[5]["transaction"]["ts"]
    later = _lines(ok(ledger.path, "log", "--json", "--since", ts).stdout)
    assert all(v["transaction"]["ts"] >= ts for v in later) and later
    assert _lines(ok(ledger.path, "log", "--json", "--until", "2000-01-01").stdout) == []
    assert len(_lines(ok(ledger.path, "log", "--json", "--since", "2000-01-01").stdout)) == 22
    assert "--since" in fails(ledger.path, "log", "--since", "yesterday")


def test_normalize_time() -> None:
    assert normalize_time("2026-11-21", "--since") == "2026-11-21T00:00:00.000Z"
    assert normalize_time("2026-11-21T10:00:00Z", "--since") == "2026-11-21T10:00:00.000Z"
    assert normalize_time("2026-11-21T12:30:00.1234+02:00", "--until") == (
        "2026-11-21T10:30:00.123Z"
    )
    assert normalize_time("2026-11-21T10:00:00", "--since") == "2026-11-21T10:00:00.000Z"
    with pytest.raises(InvalidInput):
        normalize_time("21/11/2026", "--since")


def test_log_table(ledger: Ledger) -> None:
    out = ok(ledger.path, "log", "--limit", "3").stdout
    assert "identity.key_added" in out and "actor:admin" in out
    assert "more: --after 2" in out


def test_log_rejects_a_bad_limit(ledger: Ledger) -> None:
    assert run(ledger.path, "log", "--limit", "0").exit_code == 2


def test_show(ledger: Ledger) -> None:
    tx_id = next(iter(ledger.tx_heights))
    view = ok_json(ledger.path, "show", tx_id)
    assert view["tx_id"] == tx_id and view["height"] == ledger.tx_heights[tx_id]
    assert json.loads(b64decode(view["leaf"])) == view["transaction"]
    assert "note" in ok(ledger.path, "show", tx_id).stdout
    assert "no transaction" in fails(ledger.path, "show", "ab" * 32)


def test_block_and_head(ledger: Ledger) -> None:
    head = ok_json(ledger.path, "head")
    assert head["height"] == 4 and head["log_size"] == 22
    assert head["genesis_hash"] == ledger.genesis
    block = ok_json(ledger.path, "block", "4")
    assert block["block_hash"] == head["block_hash"]
    assert len(block["header"]["tx_ids"]) == 5
    assert ok_json(ledger.path, "block", "0")["block_hash"] == ledger.genesis
    assert "no block at height 9" in fails(ledger.path, "block", "9")
    assert "proposer" in ok(ledger.path, "block", "1").stdout


def test_checkpoint_is_printed_byte_for_byte(ledger: Ledger) -> None:
    note = ok(ledger.path, "checkpoint").stdout
    home = Home(ledger.path)
    with home.open_store() as store:
        assert note == store.head().checkpoint
        assert ok(ledger.path, "checkpoint", "--size", "7").stdout == (
            store.get_block_by_log_size(7).checkpoint
        )
    checkpoint, _ = parse_checkpoint(note)
    assert checkpoint.size == 22
    data = ok_json(ledger.path, "checkpoint")
    assert data["checkpoint"] == note and data["size"] == 22
    assert "no checkpoint at tree size 5" in fails(ledger.path, "checkpoint", "--size", "5")


def _node_key(ledger: Ledger) -> tuple[str, PublicKey]:
    home = Home(ledger.path)
    return "node", home.load_key("node").public_key


def test_inclusion_proof_verifies_offline(ledger: Ledger) -> None:
    name, key = _node_key(ledger)
    for tx_id in list(ledger.tx_heights)[::4]:
        proof = ok_json(ledger.path, "proof", tx_id)
        assert {"leaf_index", "tree_size", "leaf_hash", "hashes", "checkpoint"} <= set(proof)
        checkpoint = open_checkpoint(proof["checkpoint"], {name: key})
        leaf = b64decode(ok_json(ledger.path, "show", tx_id)["leaf"])
        assert leaf_hash(leaf).hex() == proof["leaf_hash"]
        verify_inclusion(
            proof["leaf_index"],
            proof["tree_size"],
            leaf_hash(leaf),
            [bytes.fromhex(h) for h in proof["hashes"]],
            checkpoint.root,
        )
        with pytest.raises(ProofError):
            verify_inclusion(
                proof["leaf_index"] ^ 1,
                proof["tree_size"],
                leaf_hash(leaf),
                [bytes.fromhex(h) for h in proof["hashes"]],
                checkpoint.root,
            )


def test_inclusion_proof_at_an_older_size(ledger: Ledger) -> None:
    tx_id = next(t for t, h in ledger.tx_heights.items() if h == 1)
    proof = ok_json(ledger.path, "proof", tx_id, "--size", "7")
    assert proof["tree_size"] == 7
    assert "not in the tree" in fails(
        ledger.path, "proof", next(t for t, h in ledger.tx_heights.items() if h == 4), "--size", "7"
    )


def test_consistency_proof_verifies_offline(ledger: Ledger) -> None:
    name, key = _node_key(ledger)
    proof = ok_json(ledger.path, "proof", "--consistency", "7", "22")
    assert proof["first"] == 7 and proof["second"] == 22
    first = open_checkpoint(proof["first_checkpoint"], {name: key})
    second = open_checkpoint(proof["second_checkpoint"], {name: key})
    verify_consistency(7, 22, first.root, second.root, [bytes.fromhex(h) for h in proof["hashes"]])


def test_proof_text_and_usage_errors(ledger: Ledger) -> None:
    tx_id = next(iter(ledger.tx_heights))
    out = ok(ledger.path, "proof", tx_id).stdout
    assert "leads to root" in out and out.rstrip().endswith("=")
    assert run(ledger.path, "proof").exit_code == 2
    assert run(ledger.path, "proof", tx_id, "--consistency", "2", "7").exit_code == 2
    assert run(ledger.path, "proof", "--consistency", "2", "7", "--size", "7").exit_code == 2


def test_output_goes_through_injected_consoles(ledger: Ledger) -> None:
    out, err = StringIO(), StringIO()
    consoles = Consoles(out=Console(file=out, width=300), err=Console(file=err))
    result = run(ledger.path, "head", obj=consoles)
    assert result.exit_code == 0 and result.stdout == ""
    assert ledger.genesis in out.getvalue()
    result = run(ledger.path, "show", "00" * 32, obj=consoles)
    assert result.exit_code == 2 and err.getvalue().startswith("error: no transaction")
