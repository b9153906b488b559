"""ABIs: the ERC-20/721/1155 presets, user ABI files, event topics and log decoding.

Decoding uses ``eth_abi`` (the library web3 uses); only the split between topics (indexed
arguments) and data (the others) is done here, as the ABI spec describes. An indexed
argument of a dynamic type (string, bytes, array, tuple) is only its keccak hash in the
topic, so it is stored as that ``bytes32``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak

from opsledger.core import ConfigError
from opsledger.indexer.schema import TableSpec, cell, event_table

__all__ = ["PRESETS", "ContractEvents", "EventDecoder", "load_abi"]


def _ev(name: str, *inputs: tuple[str, str, bool]) -> dict[str, Any]:
    return {
        "type": "event",
        "name": name,
        "anonymous": False,
        "inputs": [{"name": n, "type": t, "indexed": i} for n, t, i in inputs],
    }


PRESETS: dict[str, list[dict[str, Any]]] = {
    "erc20": [
        _ev(
            "Transfer",
            ("from", "address", True),
            ("to", "address", True),
            ("value", "uint256", False),
        ),
        _ev(
            "Approval",
            ("owner", "address", True),
            ("spender", "address", True),
            ("value", "uint256", False),
        ),
    ],
    "erc721": [
        _ev(
            "Transfer",
            ("from", "address", True),
            ("to", "address", True),
            ("tokenId", "uint256", True),
        ),
        _ev(
            "Approval",
            ("owner", "address", True),
            ("approved", "address", True),
            ("tokenId", "uint256", True),
        ),
        _ev(
            "ApprovalForAll",
            ("owner", "address", True),
            ("operator", "address", True),
            ("approved", "bool", False),
        ),
    ],
    "erc1155": [
        _ev(
            "TransferSingle",
            ("operator", "address", True),
            ("from", "address", True),
            ("to", "address", True),
            ("id", "uint256", False),
            ("value", "uint256", False),
        ),
        _ev(
            "TransferBatch",
            ("operator", "address", True),
            ("from", "address", True),
            ("to", "address", True),
            ("ids", "uint256[]", False),
            ("values", "uint256[]", False),
        ),
        _ev(
            "ApprovalForAll",
            ("account", "address", True),
            ("operator", "address", True),
            ("approved", "bool", False),
        ),
        _ev("URI", ("value", "string", False), ("id", "uint256", True)),
    ],
}


def load_abi(value: str, base: Path, key: str) -> list[dict[str, Any]]:
    """A preset name or the path of a JSON ABI (a list, or ``{"abi": [...]}``)."""
    if value.lower() in PRESETS:
        return PRESETS[value.lower()]
    path = (base / value).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{key}: {value!r} is neither a preset ({', '.join(PRESETS)}) nor an ABI file",
            key=key,
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: {path} is not JSON: {exc}", key=key) from exc
    if isinstance(data, dict) and isinstance(data.get("abi"), list):
        data = data["abi"]
    if not isinstance(data, list):
        raise ConfigError(f"{key}: {path} holds no ABI list", key=key)
    return [item for item in data if isinstance(item, dict)]


def _canonical(item: Mapping[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in item.get("components", [])) + ")" + kind[5:]
    return kind


def _dynamic(abi_type: str) -> bool:
    return abi_type in ("string", "bytes") or abi_type.endswith("]") or abi_type.startswith("(")


@dataclass(frozen=True, slots=True)
class EventDecoder:
    """Decodes the logs of one event into rows of its table."""

    spec: TableSpec
    topic0: str
    indexed: tuple[tuple[str, str], ...]  # (column, abi type) in topic order
    data: tuple[tuple[str, str], ...]  # (column, abi type) in data order

    @property
    def _kinds(self) -> dict[str, Any]:
        return _kinds_of(self.spec)

    def decode(self, log: Mapping[str, Any], chain: str) -> dict[str, Any] | None:
        """The row of ``log``, or None when the log does not fit this event's shape."""
        topics = log["topics"]
        if len(topics) != len(self.indexed) + 1:
            return None
        row: dict[str, Any] = {
            "chain": chain,
            "block_number": int(log["blockNumber"], 16),
            "block_hash": str(log["blockHash"]).lower(),
            "tx_hash": str(log["transactionHash"]).lower(),
            "log_index": int(log["logIndex"], 16),
            "address": str(log["address"]).lower(),
            "final": False,
        }
        kinds = self._kinds
        try:
            for (name, abi_type), topic in zip(self.indexed, topics[1:], strict=True):
                if _dynamic(abi_type):
                    row[name] = str(topic).lower()
                else:
                    row[name] = cell(kinds[name], _topic_value(abi_type, str(topic).lower()))
            if self.data:
                payload = bytes.fromhex(str(log["data"])[2:])
                values = decode([t for _, t in self.data], payload)
                for (name, _), value in zip(self.data, values, strict=True):
                    row[name] = cell(kinds[name], value)
        except (DecodingError, ValueError):
            return None
        return row


@functools.lru_cache(maxsize=1 << 16)
def _topic_value(abi_type: str, topic: str) -> Any:
    """One static indexed argument, decoded by eth_abi. Cached: topics repeat a lot (the
    same holders and spenders appear in thousands of transfers), and decoding dominates a
    backfill's CPU time."""
    return decode([abi_type], bytes.fromhex(topic[2:]))[0]


@functools.cache
def _kinds_of(spec: TableSpec) -> dict[str, Any]:
    return {c.name: c.kind for c in spec.columns}


class ContractEvents:
    """The decoders of one contract's selected events, by topic0."""

    def __init__(
        self, contract: str, abi: Sequence[Mapping[str, Any]], events: Sequence[str] | None
    ) -> None:
        self.contract = contract
        self.by_topic: dict[str, EventDecoder] = {}
        wanted = set(events) if events else None
        found: set[str] = set()
        for item in abi:
            if item.get("type") != "event" or item.get("anonymous"):
                continue
            name = str(item["name"])
            if wanted is not None and name not in wanted:
                continue
            found.add(name)
            signature = f"{name}({','.join(_canonical(i) for i in item.get('inputs', []))})"
            topic0 = "0x" + keccak(text=signature).hex()
            spec = event_table(contract, item, signature)
            args = spec.arg_columns
            inputs = item.get("inputs", [])
            indexed = tuple(
                (col.name, col.abi_type)
                for col, i in zip(args, inputs, strict=True)
                if i.get("indexed")
            )
            data = tuple(
                (col.name, col.abi_type)
                for col, i in zip(args, inputs, strict=True)
                if not i.get("indexed")
            )
            self.by_topic[topic0] = EventDecoder(spec, topic0, indexed, data)
        if wanted is not None and wanted - found:
            missing = sorted(wanted - found)[0]
            raise ConfigError(f"contract {contract}: the ABI has no event {missing!r}")

    @property
    def specs(self) -> list[TableSpec]:
        return [d.spec for d in self.by_topic.values()]

    def decode(self, log: Mapping[str, Any], chain: str) -> tuple[str, dict[str, Any]] | None:
        topics = log.get("topics") or []
        if not topics:
            return None
        decoder = self.by_topic.get(str(topics[0]).lower())
        if decoder is None:
            return None
        row = decoder.decode(log, chain)
        return None if row is None else (decoder.spec.name, row)
