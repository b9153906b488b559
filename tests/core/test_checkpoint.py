"""C2SP signed-note checkpoints: exact bytes, cosigning, and refusal of anything altered."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.core import (
    Checkpoint,
    InvalidInput,
    VerificationFailed,
    format_vkey,
    open_checkpoint,
    parse_checkpoint,
    parse_vkey,
    sign_checkpoint,
)
from opsledger.core.checkpoint import add_signature, note_key_hash
from opsledger.core.encoding import sha256
from opsledger.testing.factories import key_for

ROOT = sha256(b"root")


def test_note_bytes_follow_the_spec() -> None:
    key = key_for("node")
    note = sign_checkpoint(Checkpoint("opsledger/abc", 42, ROOT), "node", key)
    lines = note.split("\n")
    assert lines[0] == "opsledger/abc"
    assert lines[1] == "42"
    assert base64.b64decode(lines[2]) == ROOT
    assert lines[3] == ""
    assert lines[4].startswith("\u2014 node ")
    assert note.endswith("\n") and lines[5] == ""
    blob = base64.b64decode(lines[4].split(" ")[2])
    assert (
        blob[:4]
        == sha256(b"node\n\x01" + key.public_key.raw)[:4]
        == note_key_hash("node", key.public_key)
    )
    assert key.public_key.verify(b"", f"opsledger/abc\n42\n{lines[2]}\n".encode(), blob[4:])


def test_open_accepts_trusted_and_refuses_tampering() -> None:
    key = key_for("node")
    note = sign_checkpoint(Checkpoint("opsledger/abc", 42, ROOT), "node", key)
    assert open_checkpoint(note, {"node": key.public_key}).size == 42
    with pytest.raises(VerificationFailed, match="no signature by a trusted key"):
        open_checkpoint(note, {"other": key_for("other").public_key})
    with pytest.raises(VerificationFailed, match="another log"):
        open_checkpoint(note, {"node": key.public_key}, origin="opsledger/xyz")
    tampered = note.replace("\n42\n", "\n43\n")
    with pytest.raises(VerificationFailed):
        open_checkpoint(tampered, {"node": key.public_key})


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_caught(data: st.DataObject) -> None:
    key = key_for("node")
    note = sign_checkpoint(Checkpoint("opsledger/abc", 7, ROOT), "node", key).encode()
    position = data.draw(st.integers(0, len(note) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(note)
    flipped[position] ^= 1 << bit
    try:
        text = flipped.decode()
    except UnicodeDecodeError:
        return  # not even text: no reader would accept it
    with pytest.raises((VerificationFailed, InvalidInput)):
        open_checkpoint(text, {"node": key.public_key}, origin="opsledger/abc")


def test_cosignatures_and_unknown_signers() -> None:
    node, witness = key_for("node"), key_for("witness")
    note = sign_checkpoint(Checkpoint("opsledger/abc", 3, ROOT), "node", node)
    cosigned = add_signature(note, "witness", witness)
    _, sigs = parse_checkpoint(cosigned)
    assert [s.name for s in sigs] == ["node", "witness"]
    assert open_checkpoint(cosigned, {"witness": witness.public_key}).size == 3
    assert (
        open_checkpoint(cosigned, {"node": node.public_key, "nobody": witness.public_key}).size == 3
    )


def test_vkey_round_trip() -> None:
    key = key_for("node")
    vkey = format_vkey("node", key.public_key)
    assert parse_vkey(vkey) == ("node", key.public_key)
    with pytest.raises(InvalidInput):
        parse_vkey(vkey.replace("node+", "nodf+"))


@pytest.mark.parametrize(
    "bad", ["", "x\n1\n", "o\n01\nAAAA\n\n\u2014 n AAAAAAA=\n", "o\n1\nroot\n\nsig\n"]
)
def test_malformed_notes_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_checkpoint(bad)
