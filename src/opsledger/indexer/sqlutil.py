"""The small SQL layer under the index store: one connection, two dialects.

SQLite and PostgreSQL differ here only in the parameter mark (``?`` / ``%s``), the column
types of a few kinds and how a transaction starts; everything else is shared SQL
(``INSERT ... ON CONFLICT``, row-value comparisons). Also the helpers of the read API:
filter coercion and opaque page cursors.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Literal

from opsledger.core import InvalidInput
from opsledger.indexer.schema import Column, ColumnKind

__all__ = ["Dialect", "Sql", "coerce", "decode_cursor", "encode_cursor", "q"]

Dialect = Literal["sqlite", "postgresql"]


def q(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


class Sql:
    """A DB-API connection behind a re-entrant lock, with the dialect's differences."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.sql(sql), tuple(params))

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.dialect == "sqlite":
            self.conn.executemany(sql, rows)
        else:
            with self.conn.cursor() as cur:
                cur.executemany(self.sql(sql), rows)

    @contextmanager
    def tx(self) -> Iterator[None]:
        with self.lock:
            if self.dialect == "sqlite":
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            else:
                with self.conn.transaction():
                    yield

    def type_of(self, kind: ColumnKind) -> str:
        pg = self.dialect == "postgresql"
        return {
            "int": "BIGINT" if pg else "INTEGER",
            "uint": "NUMERIC(78,0)" if pg else "TEXT",
            "sint": "NUMERIC(78,0)" if pg else "TEXT",
            "address": "TEXT",
            "bytes": "TEXT",
            "bool": "BOOLEAN" if pg else "INTEGER",
            "text": "TEXT",
            "json": "TEXT",
        }[kind]

    def encode(self, kind: ColumnKind, value: Any) -> Any:
        if value is None:
            return None
        if kind in ("uint", "sint"):
            number = int(value)
            return str(number) if self.dialect == "sqlite" else Decimal(number)
        if kind == "int":
            return int(value)
        if kind == "bool":
            flag = value if isinstance(value, bool) else str(value).lower() in ("1", "true")
            return int(flag) if self.dialect == "sqlite" else flag
        if kind in ("address", "bytes"):
            return str(value).lower()
        return value

    def encoder(self, kind: ColumnKind) -> Callable[[Any], Any] | None:
        """``encode(kind, ·)`` for a non-None value as one function, or None when it is the
        identity: bulk inserts call it per cell, so the kind dispatch happens once."""
        sqlite = self.dialect == "sqlite"
        if kind in ("uint", "sint"):
            return _number_text if sqlite else _number_decimal
        if kind == "int":
            return int
        if kind == "bool":
            return _flag_int if sqlite else _flag
        if kind in ("address", "bytes"):
            return _lower
        return None

    def number_encoder(self) -> Callable[[int], Any]:
        """``encode`` of an ABI integer (``uint``/``sint``) given as an ``int``."""
        return str if self.dialect == "sqlite" else Decimal

    def column_encoder(self, kind: ColumnKind) -> Callable[[Sequence[Any]], Any] | None:
        """``encode`` of a whole column in one C-level ``map``, for the usual Python type
        only (``int`` for numbers, ``str`` for addresses/bytes); raises TypeError for a
        column holding anything else (a None, a bool, a string number): use ``encoder``."""
        sqlite = self.dialect == "sqlite"
        if kind in ("uint", "sint"):
            return (lambda v: map(str, _ints(v))) if sqlite else (lambda v: map(Decimal, _ints(v)))
        if kind == "int":
            return _ints
        if kind in ("address", "bytes"):
            return lambda values: map(str.lower, values)
        return None

    @staticmethod
    def decode(kind: ColumnKind, value: Any) -> Any:
        if value is None:
            return None
        if kind in ("uint", "sint", "int"):
            return int(value)
        if kind == "bool":
            return bool(value)
        return value


def _ints(values: Sequence[Any]) -> Sequence[int]:
    """``values`` when every one is exactly an ``int`` (bool is not), else TypeError."""
    if set(map(type, values)) - {int}:
        raise TypeError("not all ints")
    return values


def _number_text(value: Any) -> str:
    return str(int(value))


def _number_decimal(value: Any) -> Decimal:
    return Decimal(int(value))


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true")


def _flag_int(value: Any) -> int:
    return int(_flag(value))


def _lower(value: Any) -> str:
    return str(value).lower()


def coerce(col: Column, value: Any, key: str) -> Any:
    """A filter value (often a query-string str) as the column's Python type."""
    try:
        if col.kind in ("int", "uint", "sint"):
            if isinstance(value, str):
                text = value.strip().lower()
                number = int(text, 16) if text.startswith("0x") else int(text, 10)
            else:
                number = int(value)
            if col.kind == "int" and not -(2**63) <= number < 2**63:
                raise ValueError(number)  # beyond the 64-bit column: SQLite would overflow
            return number
        if col.kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"filter {key!r}: not a valid {col.kind}", field=key) from None
    return value


def encode_cursor(values: list[Any]) -> str:
    text = json.dumps(
        [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    )
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        raise InvalidInput("not a cursor from this API", field="after") from None
    if not isinstance(values, list) or len(values) != size:
        raise InvalidInput("not a cursor from this table", field="after")
    return values
