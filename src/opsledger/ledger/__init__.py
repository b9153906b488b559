"""The ledger node: admission, sequencing, blocks, checkpoints, queries, proofs, and the
contracts that every node re-executes."""

from opsledger.ledger.contracts import ContractRule, ContractRunner, StoreEvidence, load_book
from opsledger.ledger.node import (
    AdmissionRule,
    CommitListener,
    LedgerNode,
    Receipt,
    create_genesis,
)
from opsledger.ledger.verify import (
    check_deployments,
    iter_store_blocks,
    verify_contracts,
    verify_store,
)

__all__ = [
    "AdmissionRule",
    "CommitListener",
    "ContractRule",
    "ContractRunner",
    "LedgerNode",
    "Receipt",
    "StoreEvidence",
    "check_deployments",
    "create_genesis",
    "iter_store_blocks",
    "load_book",
    "verify_contracts",
    "verify_store",
]
