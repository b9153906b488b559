"""Deterministic contract evaluation: same ledger prefix, same verdict, on every node.

Inputs are only: the contract, the trigger, the evidence found on the ledger at or before
the trigger (through an ``EvidenceSource``), and the trigger's block time. No clock, no
network, no randomness; evidence is capped per set and CEL evaluation has a fixed
iteration budget. Any error while checking a requirement fails that requirement with the
error as its reason (fail closed), so a broken contract can never let a release through.

An evidence *item* (what CEL sees for a transaction)::

    {"id": tx id, "leaf": leaf index, "type", "actor", "roles": [actor's roles],
     "ts", "subject": {"kind", "id"}, "body", "refs"}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opsledger.contracts._cel import CelError, Compiled, activation
from opsledger.contracts.document import Contract, EvidenceQuery, JobRequestSpec, Template

__all__ = ["Evaluation", "EvidenceSource", "evaluate", "evidence_item"]

Item = dict[str, Any]


class EvidenceSource(Protocol):
    def find(
        self, *, tx_type: str, subject: tuple[str, str] | None, before_leaf: int, limit: int
    ) -> list[Item]:
        """Items of ``tx_type`` (exact or ``prefix.*``) on ``subject`` (None: any) with
        leaf index < ``before_leaf``, newest first, at most ``limit``."""


def evidence_item(
    *, tx_id: str, leaf_index: int, tx: Mapping[str, Any], roles: Sequence[str]
) -> Item:
    return {
        "id": tx_id,
        "leaf": leaf_index,
        "type": tx["type"],
        "actor": tx["actor"],
        "roles": list(roles),
        "ts": tx["ts"],
        "subject": dict(tx["subject"]),
        "body": tx["body"],
        "refs": list(tx["refs"]),
    }


@dataclass(frozen=True)
class Evaluation:
    """A verdict body (as recorded in ``contract.verdict``) and the jobs to request."""

    body: dict[str, Any]
    jobs: tuple[JobRequestSpec, ...]
    request: Item
    records: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.body["result"] == "pass")


def _subject(item: Item) -> tuple[str, str]:
    return item["subject"]["kind"], item["subject"]["id"]


def _find_request(contract: Contract, trigger: Item, source: EvidenceSource) -> Item | None:
    if contract.request is None or trigger["type"] == contract.request:
        return trigger
    found = source.find(
        tx_type=contract.request, subject=_subject(trigger), before_leaf=trigger["leaf"], limit=1
    )
    return found[0] if found else None


def _gather(
    query: EvidenceQuery, trigger: Item, request: Item, source: EvidenceSource, base: dict[str, Any]
) -> list[Item]:
    subject = (
        None
        if query.subject == "any"
        else _subject(request if query.subject == "request" else trigger)
    )
    newest_first = source.find(
        tx_type=query.type, subject=subject, before_leaf=trigger["leaf"] + 1, limit=query.limit
    )
    items = list(reversed(newest_first))  # oldest first reads naturally in conditions
    if query.where is not None and items:
        items = query.where.evaluate(activation({**base, "candidates": items}))
    if query.distinct == "actor":
        newest: dict[str, Item] = {}
        for item in items:
            newest[item["actor"]] = item
        items = sorted(newest.values(), key=lambda item: int(item["leaf"]))
    return items


def render(template: Template, act: Any) -> str:
    """Fill a template's holes; lists read as comma-separated values, items as their ids."""
    out = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        try:
            out.append(_text(part.evaluate(act)))
        except CelError as exc:
            out.append(f"(error: {exc.message})")
    return " ".join("".join(out).split())  # one line, however the YAML was folded


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) or "none"
    if isinstance(value, dict) and "id" in value and "type" in value:
        return str(value["id"])
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_EVIDENCE_NAME = re.compile(r"evidence\.([A-Za-z_][A-Za-z0-9_]*)")


def _cited(
    check: Compiled, cite: Compiled | None, act: Any, sets: Mapping[str, list[Item]]
) -> list[str]:
    if cite is not None:
        items = cite.evaluate(act)
        return [str(i["id"]) for i in items if isinstance(i, dict) and "id" in i]
    names = dict.fromkeys(_EVIDENCE_NAME.findall(check.source))
    return [str(item["id"]) for name in names for item in sets.get(name, [])]


def evaluate(
    contract: Contract, trigger: Item, *, source: EvidenceSource, now: str
) -> Evaluation | None:
    """The verdict of ``contract`` for ``trigger``, or None when it does not apply (the
    contract names a request type and no such request precedes the trigger)."""
    request = _find_request(contract, trigger, source)
    if request is None:
        return None
    base: dict[str, Any] = {
        "trigger": trigger,
        "request": request,
        "params": contract.params,
        "now": now,
        "evidence": {},
        "derived": {},
    }
    if contract.applies is not None:
        try:
            if not contract.applies.evaluate(activation(base)):
                return None
        except CelError:
            pass  # fail closed: evaluate, and let the requirements report the error
    sets: dict[str, list[Item]] = {}
    failures: dict[str, str] = {}
    for query in contract.evidence:
        try:
            sets[query.name] = _gather(query, trigger, request, source, base)
        except CelError as exc:
            sets[query.name] = []
            failures[query.name] = exc.message
    derived: dict[str, Any] = {}
    for name, expression in contract.derive:
        try:
            derived[name] = expression.evaluate(
                activation({**base, "evidence": sets, "derived": derived})
            )
        except CelError as exc:
            failures[f"derive.{name}"] = exc.message
    act = activation({**base, "evidence": sets, "derived": derived})
    results = []
    for requirement in contract.requirements:
        evidence: list[str] = []
        try:
            ok = bool(requirement.check.evaluate(act))
            evidence = _cited(requirement.check, requirement.cite, act, sets)
            if ok:
                reason = render(requirement.passed, act) if requirement.passed else ""
            else:
                reason = render(requirement.fail, act)
        except CelError as exc:
            ok, reason = False, f"error: {exc.message}"
        if failures and not ok:
            reason += " (" + "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())) + ")"
        results.append(
            {
                "name": requirement.name,
                "result": "pass" if ok else "fail",
                "reason": reason[:4096],
                "evidence": evidence,
            }
        )
    jobs = []
    for job in contract.jobs:
        try:
            if job.when is None or job.when.evaluate(act):
                jobs.append(job)
        except CelError:
            continue
    result = "pass" if all(r["result"] == "pass" for r in results) else "fail"
    records = []
    for spec in contract.records:
        if spec.when not in (result, "always"):
            continue
        record: dict[str, Any] = {}
        for key, expression in spec.body:
            try:
                record[key] = expression.evaluate(act)
            except CelError as exc:
                record[key] = f"(error: {exc.message})"
        records.append((spec.type, record))
    body = {
        "contract": contract.name,
        "version": contract.version,
        "trigger": trigger["id"],
        "request": request["id"],
        "result": result,
        "requirements": results,
    }
    return Evaluation(body=body, jobs=tuple(jobs), request=request, records=tuple(records))
