"""``export`` → ``verify --bundle`` (offline, no home) → ``import`` → ``verify``; tampered
bundles refused with nothing left behind; ``fork``."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from opsledger.app.bundle import FORMAT, BundleReader

from .conftest import Ledger, fails, ok, ok_json, run


def _export(ledger: Ledger, path: Path, *args: str) -> dict[str, Any]:
    info: dict[str, Any] = ok_json(ledger.path, "export", str(path), *args)
    assert info["file"] == str(path)
    return info


def _lines(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.name.endswith(".gz") else raw).splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def test_bundle_format(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    info = _export(ledger, path)
    lines = [json.loads(line) for line in _lines(path)]
    header = lines[0]
    assert header == {
        "format": FORMAT,
        "origin": header["origin"],
        "genesis_hash": ledger.genesis,
        "height": 4,
        "log_size": 22,
        "log_root": header["log_root"],
        "node": "node",
    }
    assert info["transactions"] == 22
    assert [b["height"] for b in lines[1:]] == [0, 1, 2, 3, 4]
    assert sum(len(b["leaves"]) for b in lines[1:]) == 22
    block = json.loads(base64.b64decode(lines[2]["block"]))
    assert block["height"] == 1 and lines[2]["checkpoint"].startswith(header["origin"] + "\n")


def test_export_verify_offline_import_verify(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "ledger.jsonl.gz"
    _export(ledger, bundle)
    assert bundle.read_bytes()[:2] == b"\x1f\x8b"
    nowhere = tmp_path / "no-home-here"
    result = ok_json(nowhere, "verify", "--bundle", str(bundle), "--genesis", ledger.genesis)
    assert result["ok"] is True and result["log_size"] == 22
    assert result["genesis_hash"] == ledger.genesis
    assert not nowhere.exists()
    text = ok(nowhere, "verify", "--bundle", str(bundle)).stdout
    assert ledger.genesis in text and "--genesis" in text  # the trust anchor is shown

    dest = tmp_path / "imported"
    info = ok_json(None, "import", str(bundle), "--home", str(dest))
    assert info["writable"] is False and info["log_size"] == 22
    assert ok_json(dest, "verify", "--genesis", ledger.genesis)["ok"] is True
    assert ok_json(dest, "head") == ok_json(ledger.path, "head")
    assert ok(dest, "log", "--json").stdout == ok(ledger.path, "log", "--json").stdout
    # Read-only: no keys came with it.
    assert fails(dest, "record", "note", "--subject", "x:y", "--field", "text=x")


def test_import_with_the_node_key_is_writable(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    _export(ledger, bundle)
    dest = tmp_path / "copy"
    info = ok_json(
        dest, "import", str(bundle), "--node-key", str(ledger.path / "keys" / "node.key")
    )
    assert info["writable"] is True
    # The admin key is not in the bundle; bring it along to write.
    seed = (ledger.path / "keys" / "admin.key").read_text().strip()
    ok(dest, "record", "note", "--subject", "x:y", "--field", "text=x", env={"OPSLEDGER_KEY": seed})
    assert ok_json(dest, "verify")["height"] == 5
    wrong = tmp_path / "wrong"
    assert "not an active key" in fails(
        wrong, "import", str(bundle), "--node-key", str(ledger.path / "keys" / "admin.key")
    )
    assert not wrong.exists()


def test_export_upto(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    info = _export(ledger, bundle, "--upto", "2")
    assert (info["height"], info["log_size"]) == (2, 12)
    result = ok_json(None, "verify", "--bundle", str(bundle))
    assert (result["height"], result["log_size"]) == (2, 12)
    assert "between 0 and" in fails(ledger.path, "export", str(bundle), "--upto", "9")


def _assert_refused(ledger: Ledger, bundle: Path, tmp_path: Path, height: int | None) -> None:
    result = run(None, "verify", "--bundle", str(bundle), "--json")
    assert result.exit_code == 1, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ok"] is False and outcome["height"] == height
    assert result.stderr.startswith("error: verification failed: ")
    dest = tmp_path / "refused"
    message = fails(None, "import", str(bundle), "--home", str(dest), code=1)
    assert message.startswith("verification failed")
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_tampered_bundles_are_refused_and_leave_nothing(
    ledger: Ledger, tmp_path: Path, suffix: str
) -> None:
    clean = tmp_path / f"clean{suffix}"
    _export(ledger, clean)
    lines = _lines(clean)
    bundle = tmp_path / f"bad{suffix}"

    def tamper(index: int, pos: int) -> None:
        changed = [bytearray(line) for line in lines]
        changed[index][pos] ^= 0x01
        _write(bundle, [bytes(line) for line in changed])

    block3 = json.loads(lines[4])
    leaf_at = lines[4].index(block3["leaves"][2].encode()) + 30
    tamper(4, leaf_at)  # a byte inside a leaf of block 3
    _assert_refused(ledger, bundle, tmp_path, 3)
    tamper(2, lines[2].index(b'"block":"') + 20)  # block 1's bytes
    _assert_refused(ledger, bundle, tmp_path, 1)
    tamper(5, lines[5].index(b"\\n") + 2)  # block 4's checkpoint size line
    _assert_refused(ledger, bundle, tmp_path, 4)
    _write(bundle, lines[:-1])  # truncated: the last block is missing
    _assert_refused(ledger, bundle, tmp_path, 4)
    _write(bundle, [*lines, lines[-1]])  # an extra line
    _assert_refused(ledger, bundle, tmp_path, 5)
    header = json.loads(lines[0])
    header["log_size"] = 21
    _write(bundle, [json.dumps(header).encode() + b"\n", *lines[1:]])
    _assert_refused(ledger, bundle, tmp_path, 4)


def test_damaged_gzip_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl.gz"
    _export(ledger, bundle)
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    assert fails(None, "verify", "--bundle", str(bundle), code=1).startswith("verification failed")
    bundle.write_bytes(bytes(data[: len(data) // 2]))
    assert fails(None, "verify", "--bundle", str(bundle), code=1)


def test_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    assert "header" in fails(None, "verify", "--bundle", str(junk), code=1)
    junk.write_text("")
    assert "empty" in fails(None, "verify", "--bundle", str(junk), code=1)
    assert "no bundle file" in fails(None, "verify", "--bundle", str(tmp_path / "nope"))


def test_import_refuses_an_existing_home(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    _export(ledger, bundle)
    assert "not empty" in fails(ledger.path, "import", str(bundle))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ok_json(empty, "import", str(bundle))["height"] == 4


def test_import_with_a_wrong_pin_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    _export(ledger, bundle)
    dest = tmp_path / "x" / "y"
    assert "genesis" in fails(
        None, "import", str(bundle), "--home", str(dest), "--genesis", "1" * 64, code=1
    )
    assert not (tmp_path / "x").exists()


def test_bundle_reader_streams(ledger: Ledger, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl.gz"
    _export(ledger, bundle)
    with BundleReader(bundle) as reader:
        blocks = reader.blocks()
        first = next(blocks)
        assert first.height == 0 and len(first.leaves) == 2
        assert [b.height for b in blocks] == [1, 2, 3, 4]


def test_fork(ledger: Ledger, tmp_path: Path) -> None:
    dest = tmp_path / "fork"
    info = ok_json(ledger.path, "fork", "--at", "2", str(dest))
    assert info["fork_height"] == 2 and info["log_size"] == 12
    assert info["fork_origin"].startswith(ok_json(ledger.path, "head")["origin"] + "/fork/")
    assert sorted(p.name for p in (dest / "keys").iterdir()) == ["admin.key", "node.key"]
    assert ok_json(dest, "head")["height"] == 2
    assert ok_json(dest, "verify", "--genesis", ledger.genesis)["ok"] is True
    # The original is untouched.
    assert ok_json(ledger.path, "head")["height"] == 4
    assert "between 0 and" in fails(ledger.path, "fork", "--at", "7", str(tmp_path / "f2"))
    assert "not empty" in fails(ledger.path, "fork", "--at", "1", str(dest))


def test_fork_accepts_new_blocks_that_verify(ledger: Ledger, tmp_path: Path) -> None:
    """NEEDS THE LEDGER NODE CHANGE: LedgerNode must sign checkpoints with the store's
    ``fork_origin`` (when set) for blocks above ``fork_height``. Without it the fork's
    new checkpoint carries the original origin and this test fails at the marked line."""
    dest = tmp_path / "fork"
    info = ok_json(ledger.path, "fork", "--at", "2", str(dest))
    receipt = ok_json(dest, "record", "note", "--subject", "x:y", "--field", "text=in fork")
    assert receipt["height"] == 3
    note = ok(dest, "checkpoint").stdout
    result = run(dest, "verify", "--json")
    # >>> fails until LedgerNode uses fork_origin for new blocks (see the docstring) <<<
    assert note.startswith(info["fork_origin"] + "\n"), note
    assert result.exit_code == 0, result.stdout + result.stderr
    # An export of the fork verifies offline, fork origin included.
    bundle = tmp_path / "fork.jsonl"
    assert ok_json(dest, "export", str(bundle))["fork_origin"] == info["fork_origin"]
    assert ok_json(None, "verify", "--bundle", str(bundle))["height"] == 3
