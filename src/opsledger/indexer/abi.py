"""ABIs: the ERC-20/721/1155 presets, user ABI files, event topics and log decoding.

Decoding uses ``eth_abi`` (the library web3 uses), except canonical one-word static
arguments, which ``words`` reads straight from their 32-byte word (profiled: eth_abi's
per-log cost dominated a backfill); the split between topics (indexed arguments) and data
(the others) is done here, as the ABI spec describes. An indexed
argument of a dynamic type (string, bytes, array, tuple) is only its keccak hash in the
topic, so it is stored as that ``bytes32``.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsledger.core import ConfigError
from opsledger.indexer.schema import TableSpec, cell, event_table
from opsledger.indexer.words import Irregular, WordDecoder, word_decoder

__all__ = ["KNOWN_TOPICS", "PRESETS", "ContractEvents", "EventDecoder", "load_abi", "topic_of"]


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


# topic0 (keccak-256 of the signature) of every preset event. Well-known constants, kept
# here because the first keccak call loads eth_hash's backend (pycryptodome + cffi +
# pycparser, ~0.1 s of a CLI run); a test checks them against keccak.
KNOWN_TOPICS: dict[str, str] = {
    "Transfer(address,address,uint256)": (
        "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    ),
    "Approval(address,address,uint256)": (
        "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
    ),
    "ApprovalForAll(address,address,bool)": (
        "0x17307eab39ab6107e8899845ad3d59bd9653f200f220920489ca2b5937696c31"
    ),
    "TransferSingle(address,address,address,uint256,uint256)": (
        "0xc3d58168c5ae7397731d063d5bbf3d657854427343f4c083240f7aacaa2d0f62"
    ),
    "TransferBatch(address,address,address,uint256[],uint256[])": (
        "0x4a39dc06d4c0dbc64b70af90fd698a233a518aa5d07e595d983b8c0526c8f7fb"
    ),
    "URI(string,uint256)": "0x6bb7ff708619ba0610cba295a58592e0451dee2622938c8755667688daf3529b",
}


def topic_of(signature: str) -> str:
    """topic0 of an event signature such as ``Transfer(address,address,uint256)``."""
    known = KNOWN_TOPICS.get(signature)
    if known is not None:
        return known
    from eth_hash.auto import keccak  # lazy: see KNOWN_TOPICS

    return "0x" + keccak(signature.encode()).hex()


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
    """Decodes the logs of one event into rows of its table.

    One-word static arguments (address, uintN, intN, bool, bytesN) in canonical form are
    decoded by ``words`` (a profile showed eth_abi's per-log machinery dominating backfill
    CPU); everything else, and any non-canonical word, goes through eth_abi as before.
    ``values`` is the backfill's path (a tuple in column order, no dict per log);
    ``decode`` gives the same values as a row dict.
    """

    spec: TableSpec
    topic0: str
    indexed: tuple[tuple[str, str], ...]  # (column, abi type) in topic order
    data: tuple[tuple[str, str], ...]  # (column, abi type) in data order
    kinds: dict[str, Any] = field(init=False, compare=False, hash=False, repr=False)
    table: str = field(init=False, compare=False, hash=False, repr=False)  # spec.name
    topic_count: int = field(init=False, compare=False, hash=False, repr=False)
    read_topics: Callable[[Sequence[str]], tuple[Any, ...]] = field(
        init=False, compare=False, hash=False, repr=False
    )
    data_fast: tuple[WordDecoder, ...] | None = field(
        init=False, compare=False, hash=False, repr=False
    )
    order: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = field(
        init=False, compare=False, hash=False, repr=False
    )
    arg_names: tuple[str, ...] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        kinds = {c.name: c.kind for c in self.spec.columns}
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "table", self.spec.name)
        cells = tuple(_topic_cells(t, kinds[n]) for n, t in self.indexed)
        object.__setattr__(self, "topic_count", len(cells) + 1)
        object.__setattr__(self, "read_topics", _topics_reader(cells))
        fast = tuple(_word_decoder(t) for _, t in self.data)
        usable = tuple(f for f in fast if f is not None)
        object.__setattr__(self, "data_fast", usable if len(usable) == len(fast) else None)
        # Arguments are read topics first, then data; columns follow the ABI's input order.
        names = tuple(c.name for c in self.spec.arg_columns)
        read = [n for n, _ in self.indexed] + [n for n, _ in self.data]
        object.__setattr__(self, "arg_names", names)
        object.__setattr__(self, "order", _reorder([read.index(n) for n in names]))

    def values(self, log: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The decoded arguments of ``log`` in column order (as ``schema.cell`` gives them),
        or None when the log does not fit this event's shape."""
        topics = log["topics"]
        if len(topics) != self.topic_count:
            return None
        try:
            found = self.read_topics(topics)
            if self.data:
                found += self._data_values(bytes.fromhex(str(log["data"])[2:]))
        except (ValueError, TypeError):  # bad hex, eth_abi's DecodingError, not a string
            return None
        return found if self.order is None else self.order(found)

    def decode(self, log: Mapping[str, Any], chain: str) -> dict[str, Any] | None:
        """The row of ``log`` as a dict, or None when the log does not fit this event's shape."""
        values = self.values(log)
        if values is None:
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
        row.update(zip(self.arg_names, values, strict=True))
        return row

    def _data_values(self, payload: bytes) -> tuple[Any, ...]:
        """The data arguments: canonical one-word payloads by ``words``, else eth_abi."""
        fast = self.data_fast
        if fast is not None and len(payload) == 32 * len(fast):
            try:
                if len(fast) == 1:
                    return (fast[0](payload),)
                return tuple([word(payload[32 * i : 32 * i + 32]) for i, word in enumerate(fast)])
            except Irregular:
                pass
        values = decode([t for _, t in self.data], payload)
        kinds = self.kinds
        return tuple(cell(kinds[n], v) for (n, _), v in zip(self.data, values, strict=True))


def _reorder(positions: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
    """``found -> tuple(found[i] for i in positions)``; None when that is ``found`` itself."""
    if positions == list(range(len(positions))):
        return None
    if len(positions) == 1:
        only = positions[0]
        return lambda found: (found[only],)
    return operator.itemgetter(*positions)


def _topics_reader(cells: tuple[TopicCells, ...]) -> Callable[[Sequence[str]], tuple[Any, ...]]:
    """``topics -> (cell of topics[1], ...)``: one expression per arity, since a
    non-anonymous event has at most three indexed arguments; each is a dict lookup."""
    if len(cells) == 0:
        return lambda topics: ()
    if len(cells) == 1:
        (a,) = cells
        return lambda topics: (a[topics[1]],)
    if len(cells) == 2:
        a, b = cells
        return lambda topics: (a[topics[1]], b[topics[2]])
    if len(cells) == 3:
        a, b, c = cells
        return lambda topics: (a[topics[1]], b[topics[2]], c[topics[3]])
    getitem = operator.getitem
    return lambda topics: tuple(map(getitem, cells, topics[1:]))


def decode(types: Sequence[str], payload: bytes) -> tuple[Any, ...]:
    """eth_abi's ``decode``, imported on first use (importing eth_abi and eth_utils costs
    about 0.3 s, a sixth of a whole ``--once`` backfill of 24,000 events; canonical
    one-word arguments never need it), with its ``DecodingError`` raised as ``ValueError``."""
    from eth_abi.abi import decode as abi_decode  # lazy on purpose
    from eth_abi.exceptions import DecodingError

    try:
        return tuple(abi_decode(list(types), payload))
    except DecodingError as exc:
        raise ValueError(str(exc)) from exc


@functools.cache
def _word_decoder(abi_type: str) -> WordDecoder | None:
    return word_decoder(abi_type)


TOPIC_CACHE = 1 << 16  # topics remembered per (type, kind) before the cache starts over


class TopicCells(dict[str, Any]):
    """topic (as the node wrote it) -> the cell of one indexed argument of a given type.

    Topics repeat a lot (the same holders and spenders appear in thousands of transfers,
    token ids in their mint and later transfers), so each one is decoded once; a hit is
    a plain dict lookup, with no Python call at all when done through ``map``. At
    ``TOPIC_CACHE`` entries it starts over, so memory stays bounded. A topic that does
    not fit the type raises ValueError and is not remembered.
    """

    def __init__(self, abi_type: str, kind: Any) -> None:
        super().__init__()
        self.abi_type = abi_type
        self.kind = kind
        self.dynamic = _dynamic(abi_type)

    def __missing__(self, topic: str) -> Any:
        text = str(topic).lower()
        # An indexed dynamic argument is only its hash: kept as that ``bytes32``.
        value = text if self.dynamic else _topic_cell(self.abi_type, self.kind, text)
        if len(self) >= TOPIC_CACHE:
            self.clear()
        self[topic] = value
        return value


@functools.cache
def _topic_cells(abi_type: str, kind: Any) -> TopicCells:
    """One cache per (type, kind), shared by every event that has such an argument."""
    return TopicCells(abi_type, kind)


def _topic_cell(abi_type: str, kind: Any, topic: str) -> Any:
    """One static indexed argument as its cell (raises ValueError when it does not fit)."""
    raw = bytes.fromhex(topic[2:])
    fast = _word_decoder(abi_type)
    if fast is not None and len(raw) == 32:
        try:
            return fast(raw)
        except Irregular:
            pass
    return cell(kind, decode([abi_type], raw)[0])


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
            topic0 = topic_of(signature)
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
