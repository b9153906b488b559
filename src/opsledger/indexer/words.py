"""Fast decoding of one 32-byte ABI word of a static elementary type (hand-written on purpose).

Profiling a 24,000-event backfill showed eth_abi's per-log ``decode`` (stream objects,
decoder lookups, pointer validation) taking over half of the indexer's CPU time. The events
that dominate real chains (ERC-20/721/1155 transfers, approvals) carry only static
elementary arguments, and each of those is exactly one 32-byte word: an address is the last
20 bytes, a uintN the big-endian integer, a bool the last byte. This module decodes such a
word directly, but **only in its canonical encoding** (zero padding, sign extension for
intN, 0/1 for bool). Anything else raises ``Irregular`` and the caller falls back to eth_abi,
which keeps its exact behaviour (decode or reject) for every odd input. A Hypothesis test
(``tests/indexer/test_words.py``) checks the two agree.

Values come out as ``schema.cell`` would produce them from eth_abi's result: addresses and
``bytesN`` as lower-case ``0x`` hex, integers as ``int``, bools as ``bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["Irregular", "WordDecoder", "word_decoder"]

WordDecoder = Callable[[bytes], Any]

_ZERO = bytes(32)
_ONES = b"\xff" * 32
_SIZED = re.compile(r"(u?int|bytes)(\d*)")


class Irregular(Exception):
    """The word is not in canonical form: let eth_abi decide."""


def _address(word: bytes) -> str:
    if word[:12] != _ZERO[:12]:
        raise Irregular
    return "0x" + word[12:].hex()


def _bool(word: bytes) -> bool:
    if word == _ZERO:
        return False
    if word[:31] == _ZERO[:31] and word[31] == 1:
        return True
    raise Irregular


def _uint(bits: int) -> WordDecoder:
    pad = 32 - bits // 8

    def decode(word: bytes) -> int:
        if pad and word[:pad] != _ZERO[:pad]:
            raise Irregular
        return int.from_bytes(word, "big")

    return decode


def _sint(bits: int) -> WordDecoder:
    pad = 32 - bits // 8

    def decode(word: bytes) -> int:
        value = int.from_bytes(word[pad:], "big", signed=True)
        if pad and word[:pad] != (_ONES[:pad] if value < 0 else _ZERO[:pad]):
            raise Irregular
        return value

    return decode


def _fixed_bytes(size: int) -> WordDecoder:
    def decode(word: bytes) -> str:
        if size < 32 and word[size:] != _ZERO[size:]:
            raise Irregular
        return "0x" + word[:size].hex()

    return decode


def word_decoder(abi_type: str) -> WordDecoder | None:
    """The fast decoder of a one-word static type, or None (use eth_abi for this type)."""
    if abi_type == "address":
        return _address
    if abi_type == "bool":
        return _bool
    match = _SIZED.fullmatch(abi_type)
    if match is None:
        return None
    base, digits = match.groups()
    if base == "bytes":
        size = int(digits) if digits else 0
        return _fixed_bytes(size) if 1 <= size <= 32 else None  # plain "bytes" is dynamic
    bits = int(digits) if digits else 256
    if not (8 <= bits <= 256 and bits % 8 == 0):
        return None
    return _uint(bits) if base == "uint" else _sint(bits)
