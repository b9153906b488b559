"""Blocks: batches of leaves appended to the one global Merkle log, hash-linked.

Header fields (signed, RFC 8785 canonical): ``height``, ``prev_hash`` (hex SHA-256 of the
previous header, 64 zeros for genesis), ``time`` (block time, RFC 3339 UTC), ``tx_ids``,
``tx_root`` (RFC 9162 root over this block's leaves), ``log_size`` and ``log_root`` (the
global log after this block), ``proposer`` and ``key_id`` (the node that cut it).

``block_hash = SHA-256(canonical(header))``; the node signs ``DOMAIN_BLOCK || canonical(header)``.
The hash excludes the signature so that cosigning nodes agree on one hash per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsledger.core.crypto import DOMAIN_BLOCK, PrivateKey, PublicKey
from opsledger.core.encoding import b64decode, b64encode, canonical, parse_json, sha256_hex
from opsledger.core.errors import InvalidInput

__all__ = ["GENESIS_PREV_HASH", "Block", "BlockHeader", "sign_block"]

GENESIS_PREV_HASH = "0" * 64
_HEADER_FIELDS = (
    "height",
    "prev_hash",
    "time",
    "tx_ids",
    "tx_root",
    "log_size",
    "log_root",
    "proposer",
    "key_id",
)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    height: int
    prev_hash: str
    time: str
    tx_ids: tuple[str, ...]
    tx_root: str
    log_size: int
    log_root: str
    proposer: str
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "prev_hash": self.prev_hash,
            "time": self.time,
            "tx_ids": list(self.tx_ids),
            "tx_root": self.tx_root,
            "log_size": self.log_size,
            "log_root": self.log_root,
            "proposer": self.proposer,
            "key_id": self.key_id,
        }

    def canonical(self) -> bytes:
        return canonical(self.to_dict())

    @property
    def block_hash(self) -> str:
        return sha256_hex(self.canonical())


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    sig: bytes

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def block_hash(self) -> str:
        return self.header.block_hash

    def to_dict(self) -> dict[str, Any]:
        return {**self.header.to_dict(), "sig": b64encode(self.sig)}

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict())

    def verify_signature(self, public_key: PublicKey) -> bool:
        return public_key.verify(DOMAIN_BLOCK, self.header.canonical(), self.sig)

    @classmethod
    def from_bytes(cls, data: bytes) -> Block:
        obj = parse_json(data)
        if not isinstance(obj, dict) or set(obj) != {*_HEADER_FIELDS, "sig"}:
            raise InvalidInput("block is not an object with exactly the header fields and sig")
        try:
            header = BlockHeader(
                height=_int(obj["height"]),
                prev_hash=_hex64(obj["prev_hash"], "prev_hash"),
                time=str(obj["time"]),
                tx_ids=tuple(_hex64(t, "tx_ids") for t in obj["tx_ids"]),
                tx_root=_hex64(obj["tx_root"], "tx_root"),
                log_size=_int(obj["log_size"]),
                log_root=_hex64(obj["log_root"], "log_root"),
                proposer=str(obj["proposer"]),
                key_id=str(obj["key_id"]),
            )
        except TypeError as exc:
            raise InvalidInput(f"malformed block: {exc}") from exc
        return cls(header=header, sig=b64decode(str(obj["sig"]), field="sig"))


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput("block height and log_size are non-negative integers")
    return value


def _hex64(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise InvalidInput(f"block {name} must be 64 lower-case hex digits", field=name)
    return value


def sign_block(header: BlockHeader, key: PrivateKey) -> Block:
    return Block(header=header, sig=key.sign(DOMAIN_BLOCK, header.canonical()))
