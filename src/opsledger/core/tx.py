"""Transactions: the unsigned model, signing, and parsing signed bytes.

Wire form (JSON, RFC 8785 canonical when hashed or signed)::

    {"v": 1, "type": "build.finished", "actor": "ci-runner", "key_id": "<32 hex>",
     "ts": "2026-11-21T23:59:00.123Z", "nonce": 1763769540123456,
     "subject": {"kind": "artifact", "id": "sha256:..."}, "body": {...}, "refs": [],
     "sig": "<base64 Ed25519 over DOMAIN_TX || canonical(tx without sig)>"}

* the signed bytes of the log leaf are ``canonical(tx with sig)``;
* the transaction id is ``SHA-256(leaf)`` in hex; the Merkle leaf hash is
  ``SHA-256(0x00 || leaf)``.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from opsledger.core.crypto import DOMAIN_TX, PrivateKey, PublicKey
from opsledger.core.encoding import (
    b64decode,
    b64encode,
    canonical,
    fast_path_safe,
    parse_json_plain,
    sha256_hex,
)
from opsledger.core.errors import InvalidInput
from opsledger.core.merkle import leaf_hash
from opsledger.core.schemas import validate_transaction

__all__ = [
    "Receipt",
    "SignedTransaction",
    "Subject",
    "Transaction",
    "format_ts",
    "normalize_time",
    "parse_subject",
    "sign_transaction",
]

TX_VERSION = 1


def format_ts(moment: _dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``: fixed width, so strings sort as times."""
    utc = moment.astimezone(_dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STAMP = re.compile(r"^[1-9]\d{3}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
"""The stored form: as text, these sort in time order."""


def normalize_time(text: str, option: str) -> str:
    """RFC 3339 (any offset) or a bare date, as the stored ``YYYY-MM-DDTHH:MM:SS.mmmZ``
    (timestamps compare as strings, so they must have exactly that shape). Every query
    path goes through it (the CLI and the HTTP API alike): a raw ``...:56Z`` would sort
    after ``...:56.240Z`` and drop that second's transactions."""
    value = text.strip()
    try:
        if _DATE.match(value):
            moment = _dt.datetime.fromisoformat(value).replace(tzinfo=_dt.UTC)
        else:
            moment = _dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=_dt.UTC)
        stamp = format_ts(moment)  # UTC: an offset may carry it past year 1 or 9999
    except (ValueError, OverflowError):
        stamp = ""
    if not _STAMP.match(stamp):  # also years before 1000, which would not sort as text
        raise InvalidInput(
            f"{option} must be an RFC 3339 time or a date like 2026-11-21 (years 1000 to"
            f" 9999), got {text!r}",
            field=option.lstrip("-"),
        )
    return stamp


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def parse_subject(text: str) -> Subject:
    """``KIND:ID`` (the id may itself contain colons, as in ``artifact:sha256:ab..``)."""
    kind, sep, ident = text.partition(":")
    if not sep or not kind or not ident:
        raise InvalidInput(f"subject must look like KIND:ID, got {text!r}", field="subject")
    return Subject(kind, ident)


@dataclass(frozen=True, slots=True)
class Transaction:
    """An unsigned transaction. ``to_dict`` is the exact JSON object that gets signed."""

    type: str
    actor: str
    key_id: str
    ts: str
    nonce: int
    subject: Subject
    body: dict[str, Any]
    refs: tuple[str, ...] = ()
    v: int = TX_VERSION
    ledger: str = ""  # the checkpoint origin of the ledger it is for; "" only in genesis

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "type": self.type,
            "ledger": self.ledger,
            "actor": self.actor,
            "key_id": self.key_id,
            "ts": self.ts,
            "nonce": self.nonce,
            "subject": {"kind": self.subject.kind, "id": self.subject.id},
            "body": self.body,
            "refs": list(self.refs),
        }

    def signing_bytes(self) -> bytes:
        return canonical(self.to_dict())


def _assemble(obj: dict[str, Any], *, checked: bool = False) -> tuple[bytes, bytes]:
    """RFC 8785 bytes of a schema-valid transaction object without and with ``sig``
    (``sig`` may be absent: then both are the unsigned message), built field by field.

    The envelope has a fixed set of keys, so their sorted order is known, and the schema
    restricts ``actor``, ``key_id``, ``ts``, ``type``, ``refs`` and ``sig`` to characters that
    need no escaping: only ``body`` and ``subject.id`` need the general encoder, once each.
    ``checked`` says the values were already found free of floats and unsafe integers
    (``parse_json_plain``). ``tests/core/test_encoding.py`` proves the bytes identical to
    ``rfc8785`` for every type. Call it only on objects that passed ``validate_transaction``.
    """
    refs = ",".join(f'"{ref}"' for ref in obj["refs"])
    subject = obj["subject"]
    head = (
        f'{{"actor":"{obj["actor"]}","body":'.encode()
        + canonical(obj["body"], checked=checked)
        + f',"key_id":"{obj["key_id"]}","ledger":"{obj["ledger"]}"'.encode()
        + f',"nonce":{obj["nonce"]},"refs":[{refs}]'.encode()
    )
    tail = (
        b',"subject":{"id":'
        + canonical(subject["id"], checked=checked)
        + f',"kind":"{subject["kind"]}"}},"ts":"{obj["ts"]}",'.encode()
        + f'"type":"{obj["type"]}","v":{obj["v"]}}}'.encode()
    )
    message = head + tail
    sig = obj.get("sig")
    if sig is None:
        return message, message
    return message, head + f',"sig":"{sig}"'.encode() + tail


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A signed transaction with its canonical leaf bytes, id and signed message."""

    tx: Transaction
    sig: bytes
    leaf: bytes = field(repr=False)
    tx_id: str
    signing: bytes = field(repr=False, default=b"")

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.leaf)

    @property
    def message(self) -> bytes:
        """The canonical unsigned transaction: what the signature covers after DOMAIN_TX."""
        return self.signing or self.tx.signing_bytes()

    def verify_signature(self, public_key: PublicKey) -> bool:
        return public_key.verify(DOMAIN_TX, self.message, self.sig)

    def to_dict(self) -> dict[str, Any]:
        return {**self.tx.to_dict(), "sig": b64encode(self.sig)}

    @classmethod
    def parse(cls, data: bytes | str) -> SignedTransaction:
        """Decode and schema-check signed transaction JSON (any key order or spacing).
        Does not check the signature: that needs the actor's key (see ``admission``)."""
        if isinstance(data, bytes):
            fast = _parse_canonical(data)
            if fast is not None:
                return fast
        obj, plain = parse_json_plain(data)
        return cls.from_dict(obj, _checked=plain)

    @classmethod
    def from_dict(cls, obj: Any, *, _checked: bool = False) -> SignedTransaction:
        if not isinstance(obj, dict):
            raise InvalidInput("a transaction is a JSON object", field="transaction")
        validate_transaction(obj)
        if "sig" not in obj:
            raise InvalidInput("transaction is not signed: sig is missing", field="sig")
        subject = obj["subject"]
        tx = Transaction(
            type=obj["type"],
            actor=obj["actor"],
            key_id=obj["key_id"],
            ts=obj["ts"],
            nonce=obj["nonce"],
            subject=Subject(subject["kind"], subject["id"]),
            body=obj["body"],
            refs=tuple(obj["refs"]),
            v=obj["v"],
            ledger=obj["ledger"],
        )
        sig = b64decode(obj["sig"], field="sig")
        message, leaf = _assemble(obj, checked=_checked)
        return cls(tx=tx, sig=sig, leaf=leaf, tx_id=sha256_hex(leaf), signing=message)


def _parse_canonical(data: bytes) -> SignedTransaction | None:
    """The fast path for what clients normally send: the canonical leaf bytes themselves.

    ``orjson`` decodes about four times faster than the standard library with the hooks
    ``parse_json_plain`` needs, but it keeps the last of duplicate keys silently. That is
    harmless here because the result is used only if re-encoding it gives back exactly
    ``data``: canonical JSON has no duplicate keys, no NaN and no insignificant bytes, so
    equal bytes mean the strict parser would have read the same object. Anything else
    (another key order, spacing, a decode or schema error) returns ``None`` and takes the
    strict path, so errors and accepted inputs are the same as without this function.
    Values with floats or integers outside ±(2**53 - 1) always take the strict path.
    """
    try:
        obj = orjson.loads(data)
        # orjson reads an integer beyond 64 bits as a float, which can re-encode to the
        # same digits; the strict parser reads an int and refuses it. So only plain values
        # (no float, every integer safe) stay here; everything else takes the strict path.
        if not isinstance(obj, dict) or not fast_path_safe(obj):
            return None
        stx = SignedTransaction.from_dict(obj, _checked=True)
    except (ValueError, TypeError, RecursionError, InvalidInput):  # JSONDecodeError: ValueError
        return None
    return stx if stx.leaf == data else None


def sign_transaction(tx: Transaction, key: PrivateKey) -> SignedTransaction:
    """Sign on the client side; the node never holds a user's private key."""
    if tx.key_id != key.key_id:
        raise InvalidInput("key_id does not match the signing key", field="key_id")
    obj = tx.to_dict()
    validate_transaction(obj)
    message, _ = _assemble(obj)
    sig = key.sign(DOMAIN_TX, message)
    obj["sig"] = b64encode(sig)
    _, leaf = _assemble(obj)
    return SignedTransaction(tx=tx, sig=sig, leaf=leaf, tx_id=sha256_hex(leaf), signing=message)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a writer gets back once its transaction's block is durable."""

    tx_id: str
    height: int
    leaf_index: int

    def to_dict(self) -> dict[str, Any]:
        return {"tx_id": self.tx_id, "height": self.height, "leaf_index": self.leaf_index}
