"""The ledger node: admission, sequencing, blocks, checkpoints, queries and proofs."""

from opsledger.ledger.node import (
    LedgerNode,
    Receipt,
    create_genesis,
    iter_store_blocks,
    verify_store,
)

__all__ = ["LedgerNode", "Receipt", "create_genesis", "iter_store_blocks", "verify_store"]
