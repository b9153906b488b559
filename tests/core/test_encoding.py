"""The fast canonical path must be byte-identical to the rfc8785 reference."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opsledger.core import InvalidInput, SignedTransaction, Subject, canonical, parse_json
from opsledger.core.encoding import canonical_reference, parse_json_plain
from opsledger.core.schemas import BODY_SCHEMAS
from opsledger.testing.factories import make_tx, sample_bodies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
@example({"\ue000": 1, "\U0001f600": 2})  # code point vs UTF-16 order differ here
@example({"a": 1e21, "b": 1.0, "c": -0.0})
@example('\x00\x1f\x7f\u2028\\"')
@example(2**53 - 1)
def test_fast_path_is_byte_identical_to_rfc8785(value: Any) -> None:
    assert canonical(value) == canonical_reference(value)


@pytest.mark.parametrize("tx_type", sorted(BODY_SCHEMAS))
def test_every_schema_type_encodes_identically(tx_type: str) -> None:
    stx = make_tx(tx_type, sample_bodies()[tx_type])
    obj = stx.to_dict()
    assert canonical(obj) == canonical_reference(obj) == stx.leaf
    assert SignedTransaction.parse(json.dumps(obj)).leaf == stx.leaf
    unsigned = stx.tx.to_dict()
    assert stx.message == canonical_reference(unsigned) == stx.tx.signing_bytes()


subject_ids = st.text(min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(BODY_SCHEMAS)),
    st.dictionaries(st.text(min_size=1).map(lambda k: "x-" + k), json_values, max_size=4),
    subject_ids,
    st.lists(st.sampled_from(["a" * 64, "0" * 64, "f" * 64]), max_size=3),
)
@example("note", {"\ue000": 1, "\U0001f600": {"\x7f": "\u2028"}}, '\x00"', [])
def test_assembled_transaction_bytes_equal_rfc8785(
    tx_type: str, extra: dict[str, Any], subject_id: str, refs: list[str]
) -> None:
    """The field-by-field encoder of signed transactions is byte-identical to rfc8785."""
    body = {**extra, **sample_bodies()[tx_type]}
    stx = make_tx(tx_type, body, subject=Subject("k", subject_id), refs=tuple(refs))
    parsed = SignedTransaction.parse(json.dumps(stx.to_dict()))
    assert parsed.leaf == stx.leaf == canonical_reference(stx.to_dict())
    assert parsed.message == stx.message == canonical_reference(stx.tx.to_dict())


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(BODY_SCHEMAS)),
    st.dictionaries(st.text(min_size=1).map(lambda k: "x-" + k), json_scalars, max_size=4),
)
def test_schema_bodies_with_extra_fields_encode_identically(
    tx_type: str, extra: dict[str, Any]
) -> None:
    body = {**extra, **sample_bodies()[tx_type]}
    obj = make_tx(tx_type, body).to_dict()
    assert canonical(obj) == canonical_reference(obj)


def test_large_integers_are_refused() -> None:
    with pytest.raises(InvalidInput):
        canonical({"n": 2**60})


def test_parse_refuses_duplicate_keys_and_constants() -> None:
    with pytest.raises(InvalidInput, match="duplicate"):
        parse_json('{"a": 1, "a": 2}')
    with pytest.raises(InvalidInput):
        parse_json('{"a": NaN}')
    with pytest.raises(InvalidInput):
        parse_json(b"\xff")


def test_reencoding_any_spacing_gives_the_same_leaf() -> None:
    stx = make_tx("note", {"text": "hello"})
    spaced = json.dumps(stx.to_dict(), indent=2)
    assert SignedTransaction.parse(spaced).leaf == stx.leaf
    assert SignedTransaction.parse(spaced).tx_id == stx.tx_id


def _strict_outcome(data: bytes) -> tuple[str, Any]:
    """What the strict parser alone makes of ``data``: the leaf, or the error."""
    try:
        obj, plain = parse_json_plain(data)
        return "ok", SignedTransaction.from_dict(obj, _checked=plain).leaf
    except InvalidInput as exc:
        return type(exc).__name__, str(exc)


def _outcome(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", SignedTransaction.parse(data).leaf
    except InvalidInput as exc:
        return type(exc).__name__, str(exc)


def _variants(leaf: bytes, draw_key: str, extra: Any) -> list[bytes]:
    obj = json.loads(leaf)
    body = leaf[1:]
    return [
        leaf,  # what clients send: the fast path takes it
        json.dumps(obj, indent=1).encode(),  # other spacing
        json.dumps(dict(reversed(list(obj.items())))).encode(),  # other key order
        b'{"' + draw_key.encode() + b'":' + json.dumps(extra).encode() + b"," + body,  # duplicate
        leaf + b" ",  # trailing space
        leaf.replace(b'"note"', b'"no\\u0074e"'),  # an escape the canonical form drops
        leaf[:-1],  # truncated
    ]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(BODY_SCHEMAS)),
    st.sampled_from(["type", "actor", "nonce", "body", "sig", "ledger", "x-extra"]),
    json_values,
)
def test_fast_parse_agrees_with_the_strict_parser(tx_type: str, key: str, extra: Any) -> None:
    """``SignedTransaction.parse`` takes an orjson fast path for canonical bytes; for every
    input, canonical or not, it must accept exactly what the strict parser accepts, with
    the same leaf, and refuse the rest with the same error."""
    stx = make_tx(tx_type, sample_bodies()[tx_type])
    for data in _variants(stx.leaf, key, extra):
        assert _outcome(data) == _strict_outcome(data), data
    assert _outcome(stx.leaf) == ("ok", stx.leaf)


@pytest.mark.parametrize(
    "number", ["100000000000000000000", "18446744073709551616", "9007199254740993", "1e20", "1.5"]
)
def test_big_numbers_parse_the_same_as_bytes_and_as_text(number: str) -> None:
    """orjson reads an integer beyond 64 bits as a float that may re-encode to the same
    digits; the strict parser reads an int and refuses it. The fast path must not
    accept what the strict one refuses, whichever way the bytes arrive."""
    stx = make_tx("note", {"text": "n"})
    data = stx.leaf.replace(b'"text":"n"', b'"text":"n","x-n":' + number.encode())
    assert _outcome(data) == _strict_outcome(data)
    assert _outcome(data) == _outcome_text(data.decode())


def _outcome_text(text: str) -> tuple[str, Any]:
    try:
        return "ok", SignedTransaction.parse(text).leaf
    except InvalidInput as exc:
        return type(exc).__name__, str(exc)
