"""Following the head live, reorg-safe.

Each poll first re-reads the header of the last indexed block and compares its hash with
what was indexed (one call: hashes chain, so a match vouches for every block below). A
mismatch means a reorg: the headers of every remembered block (those above finality) are
read in one batch, and the highest block whose hash still matches is the common ancestor
(the fork point); everything above it is rolled back in one database transaction and
indexed again from the new chain.
A chain that became shorter (``evm_revert``) is the same case. A mismatch on every
remembered block, the final anchor included, is a reorg deeper than the configured
finality depth: the follower stops with an error rather than guess.

Polling ``eth_blockNumber`` (default every second) keeps one code path for every node;
``anvil_reorg``-style reorgs that keep the height are caught because hashes are compared,
not heights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opsledger.core import UpstreamError
from opsledger.indexer.backfill import Backfill, Progress
from opsledger.indexer.chain import ChainIndexer, RangeRaced
from opsledger.indexer.storage import Batch

__all__ = ["Follower", "Reorg"]


@dataclass(frozen=True, slots=True)
class Reorg:
    chain: str
    depth: int  # blocks rolled back
    fork_block: int  # the common ancestor, kept
    old_height: int
    new_head: int
    replaced: list[str]  # hashes of the rolled-back blocks, lowest first
    removed_rows: int


class DeepReorg(UpstreamError):
    code = "deep_reorg"


class Follower:
    """One chain: ``await step()`` brings the index to the current head (or detects a reorg)."""

    def __init__(
        self,
        indexer: ChainIndexer,
        *,
        on_commit: Callable[[Batch, Progress], None] | None = None,
        on_reorg: Callable[[Reorg], None] | None = None,
    ) -> None:
        self.indexer = indexer
        self.backfill = Backfill(indexer, on_commit=on_commit)
        self.on_reorg = on_reorg
        self.head = -1

    async def check_reorg(self, head: int) -> Reorg | None:
        """Compare remembered hashes with the node's; roll back to the fork point if needed."""
        store, name = self.indexer.store, self.indexer.name
        remembered = store.block_hashes(name)
        state = store.chain_state(name)
        if not remembered or state is None or state.height < 0:
            return None
        numbers = sorted((n for n in remembered if n <= state.height), reverse=True)
        if not numbers:
            return None
        # Hashes chain: if the highest remembered block still matches, all below it do.
        top = await self.indexer.rpc.call("eth_getBlockByNumber", [hex(numbers[0]), False])
        if top and str(top["hash"]).lower() == remembered[numbers[0]][0]:
            return None
        current = await self.indexer.rpc.batch(
            [("eth_getBlockByNumber", [hex(n), False]) for n in numbers]
        )
        fork = None
        for number, block in zip(numbers, current, strict=True):
            if block and str(block["hash"]).lower() == remembered[number][0]:
                fork = number
                break
        if fork == numbers[0]:
            return None
        if fork is None:
            raise DeepReorg(
                f"{name}: reorg deeper than finality_depth "
                f"({self.indexer.config.finality_depth}): no remembered block matches",
                chain=name,
            )
        result = store.rollback(name, fork)
        self.indexer.forget_children_above(fork)
        reorg = Reorg(
            chain=name,
            depth=state.height - fork,
            fork_block=fork,
            old_height=state.height,
            new_head=head,
            replaced=result.replaced,
            removed_rows=result.removed_rows,
        )
        if self.on_reorg is not None:
            self.on_reorg(reorg)
        return reorg

    async def step(self) -> int:
        """One poll: detect a reorg, then index up to the head. Returns events written."""
        head = await self.indexer.rpc.block_number()
        self.head = head
        for _ in range(5):
            await self.check_reorg(head)
            try:
                events = await self.backfill.run(head, head)
            except RangeRaced:
                head = await self.indexer.rpc.block_number()
                self.head = head
                continue
            self.indexer.store.set_head(self.indexer.name, head)
            return events
        return 0
