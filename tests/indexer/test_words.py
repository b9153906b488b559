"""The fast one-word decoders agree with eth_abi, canonical or not (Hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.indexer.abi import KNOWN_TOPICS, PRESETS, ContractEvents, topic_of
from opsledger.indexer.schema import cell, column_kind
from opsledger.indexer.words import Irregular, word_decoder

TYPES = [
    "address",
    "bool",
    *(f"uint{b}" for b in (8, 16, 64, 128, 160, 248, 256)),
    "uint",
    *(f"int{b}" for b in (8, 32, 128, 256)),
    "int",
    *(f"bytes{n}" for n in (1, 4, 20, 31, 32)),
]


def _near_canonical(abi_type: str) -> st.SearchStrategy[bytes]:
    """Words eth_abi would write for ``abi_type`` plus random words (mostly irregular)."""
    zeros = st.binary(min_size=0, max_size=32).map(lambda b: bytes(32 - len(b)) + b)
    ones = st.binary(min_size=0, max_size=32).map(lambda b: b"\xff" * (32 - len(b)) + b)
    right = st.binary(min_size=0, max_size=32).map(lambda b: b + bytes(32 - len(b)))
    small = st.sampled_from([bytes(32), bytes(31) + b"\x01", bytes(31) + b"\x02"])
    return st.one_of(zeros, ones, right, small, st.binary(min_size=32, max_size=32))


def _reference(abi_type: str, word: bytes) -> tuple[str, Any]:
    try:
        return ("ok", cell(column_kind(abi_type), decode([abi_type], word)[0]))
    except DecodingError:
        return ("error", None)


@pytest.mark.parametrize("abi_type", TYPES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_word_decoders_match_eth_abi(abi_type: str, data: st.DataObject) -> None:
    fast = word_decoder(abi_type)
    assert fast is not None
    word = data.draw(_near_canonical(abi_type))
    expected = _reference(abi_type, word)
    try:
        got = ("ok", fast(word))
    except Irregular:
        return  # the caller falls back to eth_abi itself
    assert got == expected
    assert type(got[1]) is type(expected[1])


def test_dynamic_and_unsupported_types_have_no_word_decoder() -> None:
    for abi_type in ("bytes", "string", "uint256[]", "(uint256,address)", "uint7", "fixed"):
        assert word_decoder(abi_type) is None


EVENTS = [
    {
        "type": "event",
        "name": "Mixed",
        "anonymous": False,
        "inputs": [
            {"name": "who", "type": "address", "indexed": True},
            {"name": "delta", "type": "int128", "indexed": True},
            {"name": "tag", "type": "bytes4", "indexed": False},
            {"name": "ok", "type": "bool", "indexed": False},
            {"name": "amount", "type": "uint256", "indexed": False},
        ],
    }
]


@settings(max_examples=200, deadline=None)
@given(
    topics=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=2),
    data=st.one_of(
        st.lists(st.binary(min_size=32, max_size=32), min_size=3, max_size=3).map(b"".join),
        st.binary(max_size=130),
    ),
    canonical=st.booleans(),
)
def test_event_rows_match_eth_abi(topics: list[bytes], data: bytes, canonical: bool) -> None:
    """Whole logs: the decoder's row equals decoding every argument with eth_abi."""
    events = ContractEvents("c", EVENTS, None)
    ((topic0, decoder),) = events.by_topic.items()
    if canonical:  # make the topics/data what a contract would emit
        topics = [bytes(12) + topics[0][12:], bytes(16) + topics[1][16:]]
        data = data[:4].ljust(32, b"\0") + bytes(31) + b"\x01" + data[-32:].rjust(32, b"\0")
    log = {
        "topics": [topic0, *("0x" + t.hex() for t in topics)],
        "data": "0x" + data.hex(),
        "blockNumber": "0x5",
        "blockHash": "0x" + "ab" * 32,
        "transactionHash": "0x" + "cd" * 32,
        "logIndex": "0x2",
        "address": "0x" + "EF" * 20,
    }
    row = decoder.decode(log, "main")
    try:
        expected = {
            "who": cell("address", decode(["address"], topics[0])[0]),
            "delta": cell("sint", decode(["int128"], topics[1])[0]),
        }
        tag, ok, amount = decode(["bytes4", "bool", "uint256"], data)
        expected |= {"tag": cell("bytes", tag), "ok": ok, "amount": amount}
    except DecodingError:
        assert row is None
        return
    assert row is not None
    assert {k: row[k] for k in expected} == expected
    assert row["address"] == "0x" + "ef" * 20
    if canonical:
        assert row["ok"] is True


def test_known_topics_are_the_keccak_of_their_signatures() -> None:
    from eth_hash.auto import keccak

    for signature, topic in KNOWN_TOPICS.items():
        assert topic == "0x" + keccak(signature.encode()).hex()
    assert topic_of("Foo(uint256)") == "0x" + keccak(b"Foo(uint256)").hex()
    presets = {
        f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"
        for events in PRESETS.values()
        for e in events
    }
    assert presets == set(KNOWN_TOPICS)
