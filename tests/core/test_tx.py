from __future__ import annotations

import json

import pytest

from opsledger.core import (
    InvalidInput,
    SchemaError,
    SignedTransaction,
    UnknownType,
    canonical,
    key_id_of,
    leaf_hash,
    parse_subject,
    sha256_hex,
    transaction_schema,
)
from opsledger.core.crypto import DOMAIN_TX
from opsledger.testing.factories import key_for, make_tx, sample_bodies


def test_tx_id_and_leaf_hash_are_defined_over_the_canonical_signed_bytes() -> None:
    stx = make_tx("note", {"text": "hi"})
    assert stx.leaf == canonical(stx.to_dict())
    assert stx.tx_id == sha256_hex(stx.leaf)
    assert stx.leaf_hash == leaf_hash(stx.leaf)
    assert stx.verify_signature(key_for("admin").public_key)


def test_signature_is_domain_separated() -> None:
    stx = make_tx("note", {"text": "hi"})
    key = key_for("admin").public_key
    message = stx.tx.signing_bytes()
    assert key.verify(DOMAIN_TX, message, stx.sig)
    assert not key.verify(b"", message, stx.sig)
    assert not key.verify(b"opsledger/block/v1\n", message, stx.sig)


def test_other_key_does_not_verify() -> None:
    stx = make_tx("note", {"text": "hi"})
    assert not stx.verify_signature(key_for("mallory").public_key)


def test_any_changed_field_breaks_the_signature() -> None:
    stx = make_tx("build.finished", sample_bodies()["build.finished"])
    obj = stx.to_dict()
    obj["body"]["status"] = "failure"
    tampered = SignedTransaction.parse(json.dumps(obj))
    assert not tampered.verify_signature(key_for("admin").public_key)
    assert tampered.tx_id != stx.tx_id


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o["body"].__setitem__("digest", "md5:abc"), "body.digest"),
        (lambda o: o["body"].pop("status"), "body"),
        (lambda o: o.__setitem__("nonce", -1), "nonce"),
        (lambda o: o.__setitem__("nonce", "7"), "nonce"),
        (lambda o: o.__setitem__("ts", "yesterday"), "ts"),
        (lambda o: o.__setitem__("actor", "Bad Actor"), "actor"),
        (lambda o: o["subject"].__setitem__("kind", ""), "subject.kind"),
        (lambda o: o.__setitem__("refs", ["nothex"]), "refs[0]"),
    ],
)
def test_schema_errors_name_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    obj = make_tx("build.finished", sample_bodies()["build.finished"]).to_dict()
    mutate(obj)
    with pytest.raises(SchemaError) as info:
        SignedTransaction.parse(json.dumps(obj))
    assert info.value.details["field"] == field
    assert field in str(info.value)


def test_unknown_type_is_refused() -> None:
    obj = make_tx("note", {"text": "x"}).to_dict()
    obj["type"] = "build.exploded"
    with pytest.raises(UnknownType, match=r"build\.exploded"):
        SignedTransaction.parse(json.dumps(obj))
    with pytest.raises(UnknownType):
        transaction_schema("nope")


def test_note_body_must_be_text() -> None:
    with pytest.raises(SchemaError, match=r"body.text"):
        make_tx("note", {"text": 5})


def test_unsigned_or_non_object_is_refused() -> None:
    obj = make_tx("note", {"text": "x"}).to_dict()
    del obj["sig"]
    with pytest.raises(InvalidInput, match="not signed"):
        SignedTransaction.parse(json.dumps(obj))
    with pytest.raises(InvalidInput):
        SignedTransaction.parse("[1, 2]")


def test_subject_parsing() -> None:
    subject = parse_subject("artifact:sha256:abc")
    assert (subject.kind, subject.id) == ("artifact", "sha256:abc")
    for bad in ("artifact", ":x", "artifact:"):
        with pytest.raises(InvalidInput):
            parse_subject(bad)


def test_key_id_is_a_hash_of_the_public_key() -> None:
    key = key_for("x")
    assert key.key_id == key_id_of(key.public_key.raw)
    assert "seed" not in repr(key) and key.to_b64() not in repr(key)
