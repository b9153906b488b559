"""Persistence for the ledger: SQLite (embedded default) and PostgreSQL behind one protocol."""

from typing import TYPE_CHECKING

from opsledger.store.base import BlockRecord, LedgerStore, NodeId, TxQuery, TxRecord
from opsledger.store.factory import open_store
from opsledger.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from opsledger.store.postgres import PostgresStore


def __getattr__(name: str) -> object:
    """``PostgresStore`` loads psycopg on first use, keeping CLI start-up fast."""
    if name == "PostgresStore":
        from opsledger.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(name)


__all__ = [
    "BlockRecord",
    "LedgerStore",
    "NodeId",
    "PostgresStore",
    "SqliteStore",
    "TxQuery",
    "TxRecord",
    "open_store",
]
