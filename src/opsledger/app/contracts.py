"""Deploying and inspecting contracts through any ``LedgerClient``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsledger.client.base import LedgerClient, Signer, all_transactions
from opsledger.contracts import Contract, builtin_sources, evaluate, parse_contract
from opsledger.core import NotFound, Receipt, Subject
from opsledger.ledger import StoreEvidence
from opsledger.store import TxQuery

__all__ = [
    "deploy_builtins",
    "deploy_contract",
    "deployed_contracts",
    "dry_run",
    "find_contract",
    "verdicts",
]


def deploy_contract(client: LedgerClient, signer: Signer, source: str) -> tuple[Contract, Receipt]:
    """Parse and compile ``source`` (errors name the line), then record
    ``contract.deployed``; the node checks it again (admins only, versions only go up)."""
    contract = parse_contract(source)
    body = {
        "name": contract.name,
        "version": contract.version,
        "source": source,
        "digest": contract.digest,
    }
    receipt = client.submit(
        signer.sign("contract.deployed", Subject("contract", contract.name), body)
    )
    return contract, receipt


def deploy_builtins(client: LedgerClient, signer: Signer) -> list[dict[str, Any]]:
    """What ``init`` does: deploy every built-in contract with its defaults."""
    deployed = []
    for source in builtin_sources().values():
        contract, receipt = deploy_contract(client, signer, source)
        deployed.append({"contract": contract.ref, "tx_id": receipt.tx_id})
    return deployed


def deployed_contracts(client: LedgerClient) -> list[dict[str, Any]]:
    """Every deployment, oldest first: name, version, digest, tx id, leaf, time, actor."""
    return [
        {
            "name": view["transaction"]["body"]["name"],
            "version": view["transaction"]["body"]["version"],
            "digest": view["transaction"]["body"]["digest"],
            "tx_id": view["tx_id"],
            "leaf_index": view["leaf_index"],
            "ts": view["transaction"]["ts"],
            "actor": view["transaction"]["actor"],
            "source": view["transaction"]["body"]["source"],
        }
        for view in all_transactions(client, {"type": "contract.deployed"})
    ]


def find_contract(client: LedgerClient, ref: str) -> dict[str, Any]:
    """``NAME`` (newest version) or ``NAME@VERSION``."""
    name, _, version = ref.partition("@")
    matches = [d for d in deployed_contracts(client) if d["name"] == name]
    if version:
        matches = [d for d in matches if str(d["version"]) == version]
    if not matches:
        raise NotFound(f"no deployed contract {ref}", field="contract")
    return matches[-1]


def dry_run(home_path: Path, source: str) -> list[dict[str, Any]]:
    """What a draft contract would decide for every past trigger in a ledger, changing
    nothing: the store is opened read-only and nothing is signed."""
    from opsledger.app.home import Home

    contract = parse_contract(source)
    node = Home(home_path).open_node(writable=False)
    try:
        evidence = StoreEvidence(node.store, node.registry)
        decisions = []
        for tx_type in contract.triggers:
            after: int | None = None
            while True:
                page = node.store.query_txs(TxQuery(type=tx_type, after=after, limit=1000))
                for record in page:
                    block = node.store.get_block(record.height)
                    evaluation = evaluate(
                        contract,
                        evidence.item(record),
                        source=evidence,
                        now=block.time if block is not None else "",
                    )
                    decisions.append(
                        {
                            "trigger": record.tx_id,
                            "leaf_index": record.leaf_index,
                            "type": record.type,
                            "subject": f"{record.subject_kind}:{record.subject_id}",
                            "verdict": evaluation.body if evaluation is not None else None,
                        }
                    )
                if len(page) < 1000:
                    break
                after = page[-1].leaf_index
        return sorted(decisions, key=lambda d: int(d["leaf_index"]))
    finally:
        node.close()


def verdicts(client: LedgerClient, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """Recorded verdicts (newest first) with the fields people read."""
    views = client.list_transactions({**filters, "type": "contract.verdict", "order": "desc"})
    return [
        {
            "tx_id": v["tx_id"],
            "leaf_index": v["leaf_index"],
            "ts": v["transaction"]["ts"],
            "subject": "{kind}:{id}".format(**v["transaction"]["subject"]),
            **{
                k: v["transaction"]["body"].get(k)
                for k in ("contract", "version", "trigger", "request", "result", "requirements")
            },
        }
        for v in views
    ]
