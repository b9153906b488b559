"""Contracts: versioned YAML documents with CEL conditions that every node re-executes.

A contract only decides; the jobs it asks for are run by executors whose results come
back as evidence. See docs/contracts.md.
"""

from opsledger.contracts.book import ContractBook, Deployment
from opsledger.contracts.builtin import builtin_source, builtin_sources
from opsledger.contracts.document import Contract, JobRequestSpec, parse_contract
from opsledger.contracts.engine import Evaluation, EvidenceSource, evaluate, evidence_item

__all__ = [
    "Contract",
    "ContractBook",
    "Deployment",
    "Evaluation",
    "EvidenceSource",
    "JobRequestSpec",
    "builtin_source",
    "builtin_sources",
    "evaluate",
    "evidence_item",
    "parse_contract",
]
