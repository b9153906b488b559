from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opsledger.client.base import Signer
from opsledger.core import Subject, ThreadedSignatureChecker
from opsledger.ledger import LedgerNode, create_genesis
from opsledger.ordering import InProcessOrderer
from opsledger.store import SqliteStore
from opsledger.testing.factories import key_for


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    store = SqliteStore(path)
    store.initialize()
    create_genesis(
        store,
        admin_name="admin",
        admin_key=key_for("admin"),
        node_name="node",
        node_key=key_for("node"),
    )
    store.close()
    return path


def open_node(path: Path) -> LedgerNode:
    store = SqliteStore(path)
    store.initialize()
    return LedgerNode(
        store,
        node_key=key_for("node"),
        orderer=InProcessOrderer(max_batch=50, max_wait=0.002),
        checker=ThreadedSignatureChecker(),
        on_close=store.close,
    ).start()


@pytest.fixture
def node(db_path: Path) -> Iterator[LedgerNode]:
    n = open_node(db_path)
    yield n
    n.close()


@pytest.fixture
def admin(db_path: Path) -> Signer:
    store = SqliteStore(db_path)
    try:
        ledger = store.get_meta("origin") or ""
    finally:
        store.close()
    return Signer("admin", key_for("admin"), ledger=ledger)


def register(node: LedgerNode, admin: Signer, actor: str, roles: list[str]) -> Signer:
    key = key_for(actor)
    node.submit(
        admin.sign(
            "identity.key_added",
            Subject("actor", actor),
            {"actor": actor, "public_key": key.public_key.b64, "roles": roles},
        )
    )
    return Signer(actor, key, ledger=admin.ledger)
