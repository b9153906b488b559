"""One chain's indexing state: which addresses to watch, how a block range becomes a Batch.

Both the backfill and the live follower turn a block range into a ``storage.Batch`` here:
fetch the logs of every watched address, decode them into rows, discover factory children
(and fetch their logs from their creation block), and fetch the headers of the blocks that
are still above finality so a later reorg can be detected. Headers and log block hashes
must agree, otherwise the range raced a reorg and is fetched again (``RangeRaced``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opsledger.indexer.abi import ContractEvents
from opsledger.indexer.config import ChainConfig, ContractConfig
from opsledger.indexer.rpc import RpcClient
from opsledger.indexer.schema import (
    TableSpec,
    balance_table,
    check_names,
    owner_table,
    snake,
)
from opsledger.indexer.storage import Batch, Child, Store

__all__ = ["ChainIndexer", "RangeRaced", "RangeResult", "table_specs"]


class RangeRaced(Exception):
    """The chain changed while a range was fetched (headers and logs disagree)."""


@dataclass(slots=True)
class RangeResult:
    first: int
    last: int
    logs: list[dict[str, Any]]
    addresses: frozenset[str]  # the addresses the logs were fetched for
    headers: dict[int, tuple[str, str]] = field(default_factory=dict)


def table_specs(chains: Sequence[ChainConfig]) -> list[TableSpec]:
    """Every table the config needs (a contract name on two chains shares its tables)."""
    specs: dict[str, TableSpec] = {}
    for chain in chains:
        for contract in chain.contracts:
            for spec in contract.events.specs:
                specs.setdefault(spec.name, spec)
            if contract.preset == "erc721":
                specs.setdefault(f"{contract.name}_owner", owner_table(contract.name))
            elif contract.preset == "erc20":
                specs.setdefault(f"{contract.name}_balance", balance_table(contract.name))
    result = list(specs.values())
    check_names(result)
    return result


class ChainIndexer:
    """The watched contracts of one chain and the range -> Batch step."""

    def __init__(self, config: ChainConfig, store: Store, rpc: RpcClient) -> None:
        self.config = config
        self.name = config.name
        self.store = store
        self.rpc = rpc
        self.fixed: dict[str, ContractConfig] = {
            c.address: c for c in config.contracts if c.address is not None
        }
        self.templates: dict[str, ContractConfig] = {
            c.name: c for c in config.contracts if c.factory is not None
        }
        self.children: dict[str, Child] = {c.address: c for c in store.children(self.name)}
        self.topics0 = sorted({t for c in config.contracts for t in c.events.by_topic})

    # -- what to watch ----------------------------------------------------------------------
    def addresses(self) -> frozenset[str]:
        return frozenset(self.fixed) | frozenset(self.children)

    def _contract_for(self, address: str, block: int) -> ContractEvents | None:
        fixed = self.fixed.get(address)
        if fixed is not None:
            return fixed.events if block >= fixed.start_block else None
        child = self.children.get(address)
        if child is not None and block >= child.start_block:
            template = self.templates.get(child.contract)
            return template.events if template else None
        return None

    # -- fetching ---------------------------------------------------------------------------
    async def fetch(self, first: int, last: int, head: int) -> RangeResult:
        """Logs of [first, last] (raises ``RpcError`` for the caller to split the range)."""
        addresses = self.addresses()
        logs = await self.rpc.get_logs(sorted(addresses), self.topics0, first, last)
        result = RangeResult(first, last, logs, addresses)
        await self._headers(result, head)
        return result

    async def _headers(self, result: RangeResult, head: int) -> None:
        """Hashes of the blocks of the range above finality; checks logs agree with them."""
        low = max(result.first, head - self.config.finality_depth)
        if low > result.last:
            return
        numbers = list(range(low, result.last + 1))
        blocks = await self.rpc.blocks(numbers, self.config.batch_size)
        previous: str | None = None
        for block in blocks:
            number = int(block["number"], 16)
            if previous is not None and block["parentHash"] != previous:
                raise RangeRaced(f"{self.name}: block {number} does not extend {number - 1}")
            previous = block["hash"]
            result.headers[number] = (str(block["hash"]).lower(), str(block["parentHash"]).lower())
        for log in result.logs:
            number = int(log["blockNumber"], 16)
            known = result.headers.get(number)
            if known is not None and str(log["blockHash"]).lower() != known[0]:
                raise RangeRaced(f"{self.name}: logs of block {number} are from another fork")

    async def complete(self, result: RangeResult) -> None:
        """Add the logs of children the range was fetched without (found since, or in it)."""
        for _ in range(8):  # children of children: a few levels at most
            self._discover(result)
            missing = [
                c
                for a, c in self.children.items()
                if a not in result.addresses and c.start_block <= result.last
            ]
            if not missing:
                return
            start = max(result.first, min(c.start_block for c in missing))
            extra = await self.rpc.get_logs(
                sorted(c.address for c in missing), self.topics0, start, result.last
            )
            for log in extra:
                known = result.headers.get(int(log["blockNumber"], 16))
                if known is not None and str(log["blockHash"]).lower() != known[0]:
                    raise RangeRaced(f"{self.name}: child logs are from another fork")
            result.logs.extend(extra)
            result.addresses = result.addresses | {c.address for c in missing}

    def _discover(self, result: RangeResult) -> None:
        if not self.templates:
            return  # no factory in this chain: nothing to discover (and no loop over the logs)
        for log in result.logs:
            address = str(log["address"]).lower()
            number = int(log["blockNumber"], 16)
            events = self._contract_for(address, number)
            if events is None:
                continue
            for template in self.templates.values():
                factory = template.factory
                assert factory is not None
                if events.contract != factory.contract:
                    continue
                decoded = events.decode(log, self.name)
                if decoded is None:
                    continue
                table, row = decoded
                if table != f"{factory.contract}_{snake(factory.event)}":
                    continue
                child = str(row.get(factory.arg, "")).lower()
                if child and child not in self.children and child not in self.fixed:
                    self.children[child] = Child(self.name, template.name, child, number)

    def to_batch(self, result: RangeResult, head: int) -> Batch:
        """Decode the logs of a completed range into rows (duplicates dropped).

        Rows are tuples in column order (``Batch.tables``), not dicts: this loop runs once
        per log of a backfill and was most of its Python time. Rows already at or below
        finality (the same rule as ``Store.commit``) are marked final here, so the commit's
        finality update has nothing to rewrite for them.
        """
        batch = Batch(self.name, result.first, result.last, head=head)
        chain, first, last = self.name, result.first, result.last
        final_below = max(head, last) - self.config.finality_depth
        contract_for = self._contract_for
        # The fixed contracts' decoders by address, looked up without a method call.
        fixed = {a: (c.start_block, c.events.by_topic) for a, c in self.fixed.items()}
        tables = batch.tables
        # Duplicates: a log past every position taken so far cannot be one (a node returns
        # logs in order); only an out-of-order log is looked up, in a set built on demand.
        highest = (-1, -1)
        seen: set[tuple[int, int]] | None = None
        for log in result.logs:
            if log.get("removed"):
                continue
            number = int(log["blockNumber"], 16)
            index = int(log["logIndex"], 16)
            position = (number, index)
            if not first <= number <= last:
                continue
            if position <= highest:
                if seen is None:
                    seen = {(r[1], r[4]) for rows in tables.values() for r in rows}
                if position in seen:
                    continue
            address = log["address"].lower()
            known = fixed.get(address)
            if known is not None:
                by_topic = known[1] if number >= known[0] else None
            else:
                events = contract_for(address, number)
                by_topic = events.by_topic if events is not None else None
            topics = log.get("topics")
            if not by_topic or not topics:
                continue
            decoder = by_topic.get(topics[0]) or by_topic.get(str(topics[0]).lower())
            if decoder is None:
                continue
            values = decoder.values(log)
            if values is None:
                continue
            highest = max(highest, position)
            if seen is not None:
                seen.add(position)
            meta = (
                chain,
                number,
                log["blockHash"].lower(),
                log["transactionHash"].lower(),
                index,
                address,
                number <= final_below,
            )
            rows = tables.get(decoder.table)
            if rows is None:
                rows = tables[decoder.table] = []
            rows.append(meta + values)
        batch.blocks = dict(result.headers)
        batch.children = [
            c for c in self.children.values() if result.first <= c.start_block <= result.last
        ]
        return batch

    def forget_children_above(self, block: int) -> None:
        self.children = {a: c for a, c in self.children.items() if c.start_block <= block}
