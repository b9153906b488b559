"""Canonical JSON (RFC 8785, JCS) and the small codecs the ledger formats use.

``canonical(obj)`` is the one way to turn a JSON value into the bytes we hash and sign.
The reference is the ``rfc8785`` package. It is pure Python and costs ~50 µs for a
transaction, which would be most of our ingest budget, so ``canonical`` first tries
``orjson`` with sorted keys (0.4 µs for a typical body; the standard library's C encoder,
used before, took 4.8 µs) and keeps its output only where it is provably identical to JCS:

* the output is pure ASCII, so every key is ASCII and code-point order equals the
  UTF-16 code-unit order JCS sorts by, and no string holds a character whose escaping
  could differ;
* the value holds no float (JCS formats numbers like ECMAScript; Python's ``repr``
  differs for e.g. ``1e21`` or ``1.0``) and every integer is within ±(2**53 - 1);
* both encoders escape ``"``, ``\\`` and control characters the same way (short forms
  for ``\\b \\f \\n \\r \\t``, ``\\u00xx`` in lower-case hex otherwise), write no
  whitespace, and write integers and ``true``/``false``/``null`` alike.

Anything else goes to ``rfc8785``. ``tests/core/test_encoding.py`` checks byte identity
against ``rfc8785`` with hypothesis over arbitrary JSON and every schema'd body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import orjson
import rfc8785

from opsledger.core.errors import InvalidInput

__all__ = [
    "MAX_SAFE_INT",
    "b64decode",
    "b64encode",
    "canonical",
    "canonical_reference",
    "fast_path_safe",
    "parse_json",
    "parse_json_plain",
    "sha256",
    "sha256_hex",
]

MAX_SAFE_INT = 2**53 - 1


def canonical_reference(obj: Any) -> bytes:
    """RFC 8785 bytes from the reference implementation (slow, always right)."""
    try:
        return bytes(rfc8785.dumps(obj))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidInput(f"value cannot be canonicalised: {exc}") from exc


def fast_path_safe(obj: Any) -> bool:
    """True when ``obj`` holds no float and no integer outside the safe range."""
    # Exact type checks (a subclass of dict or int takes the reference path, which is
    # still right): this walk runs for every transaction body admitted.
    stack = [obj]
    pop, push = stack.pop, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict:
            push(value.values())
        elif kind is list:
            push(value)
        elif kind is int:
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
                return False
        else:
            return False
    return True


def canonical(obj: Any, *, checked: bool = False) -> bytes:
    """RFC 8785 canonical bytes of a JSON value (see the module docstring). ``checked``
    says the caller already knows the value holds no float and no unsafe integer (it
    came from ``parse_json_plain``), which skips the walk that proves it."""
    if checked or fast_path_safe(obj):
        try:
            data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            return canonical_reference(obj)
        if data.isascii():
            return data
    return canonical_reference(obj)


def parse_json(data: bytes | str) -> Any:
    """Parse JSON, refusing NaN/Infinity and duplicate keys (ambiguous for signers)."""
    return parse_json_plain(data)[0]


def parse_json_plain(data: bytes | str) -> tuple[Any, bool]:
    """``parse_json``, also saying whether the value is *plain*: no float and no integer
    outside ±(2**53 - 1), so ``canonical(value, checked=True)`` may take the fast path
    without walking it again. Found by the parser's own number hooks, for free."""
    plain = [True]

    def _float(text: str) -> float:
        plain[0] = False
        return float(text)

    def _int(text: str) -> int:
        value = int(text)
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            plain[0] = False
        return value

    def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise InvalidInput(f"duplicate JSON key {key!r}", field=key)
                seen.add(key)
        return result

    def _no_constant(name: str) -> Any:
        raise InvalidInput(f"JSON constant {name} is not allowed")

    try:
        value = json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_float,
            parse_int=_int,
        )
        return value, plain[0]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("JSON nested too deeply") from exc


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, field: str = "value") -> bytes:
    """Strict, canonical standard base64 (with padding); a clear error names the field.

    Non-canonical encodings (set padding bits) are refused: otherwise two different
    strings would decode to the same signature or root, and tampering with those bits
    would go unnoticed while changing the bytes that are hashed.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid base64", field=field) from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise InvalidInput(f"{field} is not canonical base64", field=field)
    return data
