"""The JSON shapes of ledger objects, made in one place for the API, clients and CLI."""

from __future__ import annotations

from typing import Any

from opsledger.core import Block, b64encode, parse_json
from opsledger.store import BlockRecord, TxRecord

__all__ = ["block_view", "head_view", "tx_view"]


def tx_view(record: TxRecord) -> dict[str, Any]:
    return {
        "tx_id": record.tx_id,
        "leaf_index": record.leaf_index,
        "height": record.height,
        "leaf": b64encode(record.leaf),
        "transaction": parse_json(record.leaf),
    }


def block_view(record: BlockRecord) -> dict[str, Any]:
    block = Block.from_bytes(record.data)
    return {
        "height": record.height,
        "block_hash": record.block_hash,
        "header": block.header.to_dict(),
        "sig": b64encode(block.sig),
        "checkpoint": record.checkpoint,
    }


def head_view(
    record: BlockRecord, *, origin: str, genesis_hash: str, ledger: str | None = None
) -> dict[str, Any]:
    """``ledger`` is what new transactions must name (the fork origin of a fork)."""
    return {
        "height": record.height,
        "block_hash": record.block_hash,
        "log_size": record.log_size,
        "log_root": record.log_root,
        "time": record.time,
        "origin": origin,
        "genesis_hash": genesis_hash,
        "ledger": ledger or origin,
    }
