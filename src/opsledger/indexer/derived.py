# ruff: noqa: S608 - identifiers come from validated TableSpecs and are quoted; values are bound
"""Derived tables, kept exact incrementally: ``{nft}_owner`` and ``{erc20}_balance``.

They are computed from the ``{contract}_transfer`` rows of each committed batch, in
(block_number, log_index) order, inside the batch's transaction. A rollback first notes the
keys the doomed rows touched (``plan_rollback``), then, once the rows are deleted, re-reads
each touched token's owner from its latest remaining transfer and applies the reverse
balance deltas (``finish_rollback``). Arbitrary-precision arithmetic happens in Python, so
uint256 balances stay exact in SQLite's TEXT columns too.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opsledger.indexer.schema import TableSpec
from opsledger.indexer.sqlutil import Sql, q

__all__ = ["ZERO_ADDRESS", "DerivedTables", "RollbackPlan"]

ZERO_ADDRESS = "0x" + "0" * 40


@dataclass(slots=True)
class RollbackPlan:
    tokens: dict[str, set[int]] = field(default_factory=dict)  # owner table -> token ids
    reverse: dict[str, dict[str, int]] = field(default_factory=dict)  # balance table -> deltas


class DerivedTables:
    """Maintains every derived table of ``specs`` (the store's live mapping) through ``db``."""

    def __init__(self, db: Sql, specs: Mapping[str, TableSpec]) -> None:
        self.db = db
        self.specs = specs

    def pairs(self, kind: str) -> list[tuple[TableSpec, TableSpec]]:
        """(derived, source transfer table) pairs of ``kind``."""
        pairs = []
        for spec in self.specs.values():
            if spec.kind == kind:
                source = self.specs.get(f"{spec.contract}_transfer")
                if source is not None:
                    pairs.append((spec, source))
        return pairs

    def apply(self, chain: str, rows_by_table: Mapping[str, Sequence[tuple[Any, ...]]]) -> None:
        """Fold a batch's transfer rows (INSERT parameters: columns in ``TableSpec.columns``
        order, ABI integers as the dialect stores them) into the derived tables."""
        for owner, source in self.pairs("owner"):
            rows = rows_by_table.get(source.name)
            if rows:
                self._apply_owner(chain, owner, source, rows)
        for balance, source in self.pairs("balance"):
            rows = rows_by_table.get(source.name)
            if rows:
                sender, receiver, amount = _positions(source, *_arg_names(source))
                deltas: dict[str, int] = {}
                get = deltas.get
                for r in rows:
                    value = int(r[amount])
                    deltas[r[sender]] = get(r[sender], 0) - value
                    deltas[r[receiver]] = get(r[receiver], 0) + value
                self.apply_balance(chain, balance, deltas)

    def _apply_owner(
        self, chain: str, owner: TableSpec, source: TableSpec, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        _, receiver, token = _positions(source, *_arg_names(source))
        number, index = _positions(source, "block_number", "log_index")
        ordered = sorted(rows, key=operator.itemgetter(number, index))
        # The last transfer of a token in the batch wins (a dict keeps the last value).
        final: dict[int, tuple[str, int, int] | None] = {
            int(r[token]): (r[receiver], r[number], r[index]) for r in ordered
        }
        self._set_owners(chain, owner, final)

    def _set_owners(
        self, chain: str, owner: TableSpec, final: Mapping[int, tuple[str, int, int] | None]
    ) -> None:
        burnt = [tid for tid, v in final.items() if v is None or v[0] == ZERO_ADDRESS]
        self.db.many(
            self.db.sql(f"DELETE FROM {q(owner.name)} WHERE chain = ? AND token_id = ?"),
            [(chain, self.db.encode("uint", t)) for t in burnt],
        )
        self.db.many(
            self.db.sql(
                f"INSERT INTO {q(owner.name)} (chain, token_id, owner, block_number, log_index) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (chain, token_id) DO UPDATE SET "
                "owner = excluded.owner, block_number = excluded.block_number, "
                "log_index = excluded.log_index"
            ),
            [
                (chain, self.db.encode("uint", t), v[0], v[1], v[2])
                for t, v in final.items()
                if v is not None and v[0] != ZERO_ADDRESS
            ],
        )

    def apply_balance(self, chain: str, balance: TableSpec, deltas: Mapping[str, int]) -> None:
        touched = [h for h, d in deltas.items() if d != 0 and h != ZERO_ADDRESS]
        current: dict[str, int] = {}
        for start in range(0, len(touched), 500):
            part = touched[start : start + 500]
            marks = ", ".join("?" for _ in part)
            for holder, value in self.db.execute(
                f"SELECT holder, balance FROM {q(balance.name)} WHERE chain = ? "
                f"AND holder IN ({marks})",
                (chain, *part),
            ).fetchall():
                current[holder] = int(value)
        updates = {h: current.get(h, 0) + deltas[h] for h in touched}
        self.db.many(
            self.db.sql(f"DELETE FROM {q(balance.name)} WHERE chain = ? AND holder = ?"),
            [(chain, h) for h, v in updates.items() if v == 0],
        )
        self.db.many(
            self.db.sql(
                f"INSERT INTO {q(balance.name)} (chain, holder, balance) VALUES (?, ?, ?) "
                "ON CONFLICT (chain, holder) DO UPDATE SET balance = excluded.balance"
            ),
            [(chain, h, self.db.encode("uint", v)) for h, v in updates.items() if v != 0],
        )

    def restore_owners(
        self, chain: str, owner: TableSpec, source: TableSpec, tokens: set[int]
    ) -> None:
        _, receiver, token = (c.name for c in source.arg_columns[:3])
        final: dict[int, tuple[str, int, int] | None] = {}
        for tid in tokens:
            row = self.db.execute(
                f"SELECT {q(receiver)}, block_number, log_index FROM {q(source.name)} "
                f"WHERE chain = ? AND {q(token)} = ? ORDER BY block_number DESC, log_index DESC "
                "LIMIT 1",
                (chain, self.db.encode("uint", tid)),
            ).fetchone()
            final[tid] = None if row is None else (row[0], int(row[1]), int(row[2]))
        self._set_owners(chain, owner, final)

    def plan_rollback(self, chain: str, fork_block: int) -> RollbackPlan:
        """What the rows above ``fork_block`` touched (call before deleting them)."""
        plan = RollbackPlan()
        for owner, source in self.pairs("owner"):
            token = source.arg_columns[2].name
            plan.tokens[owner.name] = {
                int(r[0])
                for r in self.db.execute(
                    f"SELECT {q(token)} FROM {q(source.name)} WHERE chain = ? AND block_number > ?",
                    (chain, fork_block),
                ).fetchall()
            }
        for balance, source in self.pairs("balance"):
            sender, receiver, amount = (c.name for c in source.arg_columns[:3])
            deltas = plan.reverse.setdefault(balance.name, {})
            for s, r, v in self.db.execute(
                f"SELECT {q(sender)}, {q(receiver)}, {q(amount)} FROM {q(source.name)} "
                "WHERE chain = ? AND block_number > ?",
                (chain, fork_block),
            ).fetchall():
                deltas[s] = deltas.get(s, 0) + int(v)
                deltas[r] = deltas.get(r, 0) - int(v)
        return plan

    def finish_rollback(self, chain: str, plan: RollbackPlan) -> None:
        """Repair the touched keys (call after the rows above the fork are deleted)."""
        for owner, source in self.pairs("owner"):
            self.restore_owners(chain, owner, source, plan.tokens.get(owner.name, set()))
        for balance, _ in self.pairs("balance"):
            self.apply_balance(chain, balance, plan.reverse.get(balance.name, {}))


def _arg_names(source: TableSpec) -> tuple[str, str, str]:
    """(sender, receiver, token id or amount) columns of a transfer table."""
    sender, receiver, third = (c.name for c in source.arg_columns[:3])
    return sender, receiver, third


def _positions(spec: TableSpec, *names: str) -> tuple[int, ...]:
    columns = [c.name for c in spec.columns]
    return tuple(columns.index(n) for n in names)
