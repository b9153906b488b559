"""Persistence for the ledger: SQLite (embedded default) and PostgreSQL behind one protocol."""

from opsledger.store.base import BlockRecord, LedgerStore, NodeId, TxQuery, TxRecord
from opsledger.store.factory import open_store
from opsledger.store.postgres import PostgresStore
from opsledger.store.sqlite import SqliteStore

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
