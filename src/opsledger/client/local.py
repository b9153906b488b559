"""The in-process ``LedgerClient``: calls a ``LedgerNode`` directly (embedded mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opsledger.client.base import TxFilter
from opsledger.core import (
    InvalidInput,
    OpsledgerError,
    Receipt,
    SignedTransaction,
    parse_subject,
)
from opsledger.core.tx import normalize_time
from opsledger.ledger import LedgerNode
from opsledger.ledger.views import block_view, head_view, tx_view
from opsledger.store import TxQuery

__all__ = ["LocalClient", "tx_query_from_filters"]

MAX_PAGE = 1000


def _time_filter(filters: TxFilter, name: str) -> str | None:
    value = filters.get(name)
    return normalize_time(str(value), name) if value else None


def tx_query_from_filters(filters: TxFilter) -> TxQuery:
    """Turn API/CLI filters into a store query; bad values are ``InvalidInput``."""
    subject_kind = subject_id = None
    if filters.get("subject"):
        subject = str(filters["subject"])
        if ":" in subject:
            parsed = parse_subject(subject)
            subject_kind, subject_id = parsed.kind, parsed.id
        else:
            subject_kind = subject
    limit = int(filters.get("limit") or 100)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    order = filters.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise InvalidInput("order must be asc or desc", field="order")
    after = filters.get("after")
    return TxQuery(
        type=filters.get("type") or None,
        actor=filters.get("actor") or None,
        subject_kind=subject_kind,
        subject_id=subject_id,
        since=_time_filter(filters, "since"),
        until=_time_filter(filters, "until"),
        after=int(after) if after is not None and after != "" else None,
        limit=limit,
        descending=order == "desc",
    )


class LocalClient:
    def __init__(self, node: LedgerNode) -> None:
        self.node = node

    def submit(self, stx: SignedTransaction) -> Receipt:
        return self.node.submit(stx)

    def submit_many(self, stxs: Sequence[SignedTransaction]) -> list[Receipt | OpsledgerError]:
        return self.node.submit_many(stxs)

    def get_transaction(self, tx_id: str, *, proof: bool = False) -> dict[str, Any]:
        view = tx_view(self.node.get_tx(tx_id))
        if proof:
            view["proof"] = self.node.inclusion_proof(tx_id)
        return view

    def list_transactions(self, filters: TxFilter) -> list[dict[str, Any]]:
        return [tx_view(r) for r in self.node.query(tx_query_from_filters(filters))]

    def get_block(self, height: int) -> dict[str, Any]:
        return block_view(self.node.block(height))

    def head(self) -> dict[str, Any]:
        return head_view(
            self.node.head,
            origin=self.node.origin,
            genesis_hash=self.node.genesis_hash,
            ledger=self.node.checkpoint_origin,
        )

    def checkpoint(self, size: int | None = None) -> str:
        return self.node.checkpoint(size)

    def inclusion_proof(self, tx_id: str, size: int | None = None) -> dict[str, Any]:
        return self.node.inclusion_proof(tx_id, size)

    def consistency_proof(self, first: int, second: int) -> dict[str, Any]:
        return self.node.consistency_proof(first, second)

    def actor(self, name: str) -> dict[str, Any]:
        actor = self.node.registry.actor(name)
        return {
            "actor": actor.name,
            "roles": list(actor.roles),
            "kind": actor.kind,
            "keys": [
                {"key_id": key_id, "active": state.active, "retired": state.retired_by}
                for key_id, state in actor.keys.items()
            ],
            "last_nonce": actor.last_nonce,
        }

    def actors(self) -> list[dict[str, Any]]:
        return [self.actor(name) for name in sorted(self.node.registry.actors)]

    def close(self) -> None:
        self.node.close()
