"""Table layout of the index: one typed table per event, plus derived tables.

The layout is the contract between the indexer (which writes) and the query API (which
reads through ``storage.Store.list_tables``/``query``), so it lives in one pure module:

* event table ``{contract}_{event_snake}``: the meta columns ``chain``, ``block_number``,
  ``block_hash``, ``tx_hash``, ``log_index``, ``address``, ``final`` and then the decoded
  event arguments as snake_case columns (``tokenId`` -> ``token_id``; a leading ``_`` is
  dropped; a name that collides with a meta column gets an ``arg_`` prefix). Primary key
  ``(chain, block_number, log_index)``.
* ``{contract}_owner`` for ERC-721 contracts: ``chain, token_id, owner, block_number,
  log_index`` (the transfer that set the owner), primary key ``(chain, token_id)``; a burnt
  token has no row.
* ``{contract}_balance`` for ERC-20 contracts: ``chain, holder, balance``, primary key
  ``(chain, holder)``; a zero balance has no row.

Column kinds say how a value is stored and returned, so that uint256 stays exact:
``int`` (64-bit: block numbers, log indexes), ``uint``/``sint`` (any ABI integer: TEXT
decimal in SQLite, NUMERIC(78,0) in PostgreSQL, a Python ``int`` when read),
``address`` (lower-case ``0x`` hex), ``bytes`` (``0x`` hex), ``bool``, ``text``, ``json``
(arrays and tuples, as JSON text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opsledger.core import InvalidInput

__all__ = [
    "META_COLUMNS",
    "Column",
    "ColumnKind",
    "TableSpec",
    "balance_table",
    "cell",
    "check_names",
    "column_kind",
    "event_table",
    "owner_table",
    "snake",
    "spec_from_dict",
    "table_name",
]

ColumnKind = Literal["int", "uint", "sint", "address", "bytes", "bool", "text", "json"]
TableKind = Literal["event", "owner", "balance"]

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: ColumnKind
    abi_type: str = ""  # the ABI type of a decoded argument ("" for meta columns)
    indexed: bool = False  # an indexed event argument (a topic): the store indexes it


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table: what it holds, its columns, its key and how its cursor orders rows.

    ``cursor`` is the ordered list of columns a page cursor encodes: ``block_number,
    log_index, chain`` for event tables, the primary key for derived tables.
    """

    name: str
    kind: TableKind
    contract: str
    event: str  # ABI event name ("Transfer"); "" for derived tables
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    cursor: tuple[str, ...]
    signature: str = ""  # canonical event signature, "Transfer(address,address,uint256)"

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise InvalidInput(f"table {self.name} has no column {name!r}", field=name)

    @property
    def arg_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.abi_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "contract": self.contract,
            "event": self.event,
            "signature": self.signature,
            "columns": [[c.name, c.kind, c.abi_type, c.indexed] for c in self.columns],
            "primary_key": list(self.primary_key),
            "cursor": list(self.cursor),
        }


def spec_from_dict(data: Mapping[str, Any]) -> TableSpec:
    return TableSpec(
        name=data["name"],
        kind=data["kind"],
        contract=data["contract"],
        event=data["event"],
        signature=data.get("signature", ""),
        columns=tuple(Column(n, k, a, bool(i)) for n, k, a, i in data["columns"]),
        primary_key=tuple(data["primary_key"]),
        cursor=tuple(data["cursor"]),
    )


META_COLUMNS: tuple[Column, ...] = (
    Column("chain", "text"),
    Column("block_number", "int"),
    Column("block_hash", "bytes"),
    Column("tx_hash", "bytes"),
    Column("log_index", "int"),
    Column("address", "address"),
    Column("final", "bool"),
)
_META_NAMES = {c.name for c in META_COLUMNS}


def snake(name: str) -> str:
    """``tokenId`` -> ``token_id``, ``_from`` -> ``from``, ``ERC20Sent`` -> ``erc20_sent``."""
    stripped = name.strip("_")
    step = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", stripped)
    step = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", step)
    return re.sub(r"[^a-z0-9_]", "_", step.lower())


def table_name(contract: str, suffix: str) -> str:
    name = f"{contract}_{snake(suffix)}"
    if not _IDENT.match(name):
        raise InvalidInput(
            f"table name {name!r} is not a plain identifier "
            "(contract names: lower-case letters, digits, _)",
            field="contract",
        )
    return name


def column_kind(abi_type: str) -> ColumnKind:
    if abi_type.endswith("]") or abi_type.startswith("("):
        return "json"
    if abi_type.startswith("uint"):
        return "uint"
    if abi_type.startswith("int"):
        return "sint"
    if abi_type == "address":
        return "address"
    if abi_type == "bool":
        return "bool"
    if abi_type == "string":
        return "text"
    if abi_type.startswith("bytes"):
        return "bytes"
    return "json"


def event_table(contract: str, event: Mapping[str, Any], signature: str) -> TableSpec:
    """The table of one ABI event entry (``{"type": "event", "name", "inputs"}``)."""
    columns = list(META_COLUMNS)
    seen = set(_META_NAMES)
    for position, item in enumerate(event.get("inputs", [])):
        base = snake(str(item.get("name") or "")) or f"arg{position}"
        if base in seen:
            base = f"arg_{base}"
        while base in seen:
            base = f"{base}_{position}"
        seen.add(base)
        abi_type = _abi_type(item)
        columns.append(Column(base, column_kind(abi_type), abi_type, bool(item.get("indexed"))))
    return TableSpec(
        name=table_name(contract, str(event["name"])),
        kind="event",
        contract=contract,
        event=str(event["name"]),
        signature=signature,
        columns=tuple(columns),
        primary_key=("chain", "block_number", "log_index"),
        cursor=("block_number", "log_index", "chain"),
    )


def _abi_type(item: Mapping[str, Any]) -> str:
    """The canonical type of an ABI input; tuples expand to ``(t1,t2)[...]``."""
    kind = str(item["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item.get("components", []))
        return f"({inner}){kind[5:]}"
    return kind


def owner_table(contract: str) -> TableSpec:
    return TableSpec(
        name=table_name(contract, "owner"),
        kind="owner",
        contract=contract,
        event="",
        columns=(
            Column("chain", "text"),
            Column("token_id", "uint"),
            Column("owner", "address"),
            Column("block_number", "int"),
            Column("log_index", "int"),
        ),
        primary_key=("chain", "token_id"),
        cursor=("chain", "token_id"),
    )


def balance_table(contract: str) -> TableSpec:
    return TableSpec(
        name=table_name(contract, "balance"),
        kind="balance",
        contract=contract,
        event="",
        columns=(
            Column("chain", "text"),
            Column("holder", "address"),
            Column("balance", "uint"),
        ),
        primary_key=("chain", "holder"),
        cursor=("chain", "holder"),
    )


def to_json_text(value: Any) -> str:
    """Arrays/tuples as JSON; bytes become hex and big ints stay exact as strings."""

    def convert(item: Any) -> Any:
        if isinstance(item, bytes):
            return "0x" + item.hex()
        if isinstance(item, bool):
            return item
        if isinstance(item, int):
            return str(item)
        if isinstance(item, (list, tuple)):
            return [convert(x) for x in item]
        return item

    return json.dumps(convert(value), separators=(",", ":"))


def cell(kind: ColumnKind, value: Any) -> Any:
    """A decoded ABI value as the Python value the store writes for ``kind``."""
    if kind in ("uint", "sint", "int"):
        return int(value)
    if kind == "address":
        return str(value).lower()
    if kind == "bytes":
        return "0x" + bytes(value).hex() if isinstance(value, (bytes, bytearray)) else str(value)
    if kind == "bool":
        return bool(value)
    if kind == "json":
        return to_json_text(value)
    return str(value)


def check_names(specs: Sequence[TableSpec]) -> None:
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"two tables would be named {dupes[0]!r}", field="contracts")
