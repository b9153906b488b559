"""The contracts in force: every ``contract.deployed`` in log order, with its rules.

Deployment rules (checked when a node admits a deployment and again by ``verify``):
the source parses and compiles; the body's name, version and digest match the source;
a version is deployed once and versions of a name only go up. The contract in force for
a trigger is, per name, the newest version deployed before the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass

from opsledger.contracts.document import Contract, parse_contract
from opsledger.core import Conflict, InvalidInput, SignedTransaction

__all__ = ["ContractBook", "Deployment"]


@dataclass(frozen=True)
class Deployment:
    contract: Contract
    tx_id: str
    leaf_index: int


class ContractBook:
    def __init__(self) -> None:
        self._by_name: dict[str, list[Deployment]] = {}

    def check(self, stx: SignedTransaction) -> Contract | None:
        """Raise unless ``stx`` may be admitted now; the parsed contract for deployments."""
        if stx.tx.type != "contract.deployed":
            return None
        body = stx.tx.body
        try:
            contract = parse_contract(body["source"])
        except InvalidInput as exc:
            raise InvalidInput(
                f"contract source: {exc.message}", field="body.source", line=exc.details.get("line")
            ) from None
        if (contract.name, contract.version, contract.digest) != (
            body["name"],
            body["version"],
            body["digest"],
        ):
            raise InvalidInput(
                "body name, version and digest must match the contract source"
                f" ({contract.name}@{contract.version}, {contract.digest})",
                field="body",
            )
        deployed = self._by_name.get(contract.name, [])
        if deployed and deployed[-1].contract.version >= contract.version:
            raise Conflict(
                f"{contract.name}@{deployed[-1].contract.version} is deployed; a new deployment"
                " needs a higher version (a deployed version never changes)",
                field="body.version",
            )
        return contract

    def apply(
        self, stx: SignedTransaction, leaf_index: int, contract: Contract | None = None
    ) -> None:
        if stx.tx.type != "contract.deployed":
            return
        contract = contract or parse_contract(stx.tx.body["source"])
        self._by_name.setdefault(contract.name, []).append(
            Deployment(contract, stx.tx_id, leaf_index)
        )

    def in_force(self, name: str, at_leaf: int) -> Deployment | None:
        """The newest version of ``name`` deployed before leaf ``at_leaf``."""
        found = None
        for deployment in self._by_name.get(name, []):
            if deployment.leaf_index < at_leaf:
                found = deployment
        return found

    def triggered_by(self, tx_type: str, at_leaf: int) -> list[Deployment]:
        """Contracts in force at ``at_leaf`` whose triggers include ``tx_type``."""
        result = []
        for name in sorted(self._by_name):
            deployment = self.in_force(name, at_leaf)
            if deployment is not None and tx_type in deployment.contract.triggers:
                result.append(deployment)
        return result

    def newest_leaf(self) -> int:
        """The leaf index of the latest deployment, -1 when there is none."""
        return max((d.leaf_index for ds in self._by_name.values() for d in ds), default=-1)

    def all(self) -> list[Deployment]:
        return [d for name in sorted(self._by_name) for d in self._by_name[name]]

    @property
    def trigger_types(self) -> set[str]:
        return {t for ds in self._by_name.values() for d in ds for t in d.contract.triggers}
