from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsledger.indexer.config import IndexerConfig, load_file
from opsledger.indexer.service import IndexerService
from opsledger.testing.anvil import Anvil
from tests.indexer.chainkit import Chain


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    node = Anvil.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def chain(anvil: Anvil) -> Chain:
    return Chain(anvil)


class Recorded:
    """A Recorder that keeps what it was given (the ledger itself is tested elsewhere)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, tx_type: str, subject: Any, body: dict[str, Any], refs: Any = ()) -> None:
        self.items.append((tx_type, str(subject), body))

    def flush(self, timeout: float = 10.0) -> None:
        return None

    def close(self) -> None:
        return None

    def of(self, tx_type: str) -> list[dict[str, Any]]:
        return [b for t, _, b in self.items if t == tx_type]


def write_config(path: Path, section: dict[str, Any]) -> IndexerConfig:
    path.write_text(yaml.safe_dump({"indexer": section}, sort_keys=False))
    return load_file(path)


def index_once(config: IndexerConfig, recorder: Any = None) -> IndexerService:
    service = IndexerService(config, recorder)
    asyncio.run(service.run(once=True))
    return service
