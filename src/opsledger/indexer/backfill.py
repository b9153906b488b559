"""Backfill: ``eth_getLogs`` over adaptive block ranges, fetched concurrently, committed in order.

A range the node refuses ("too many results", "query returned more than 10000 results",
a response size limit, a timeout) is split in half until it passes; the range size then
shrinks to what passed and doubles again while ranges come back sparse. Up to
``concurrency`` ranges are in flight, but they are committed strictly in block order, each
with its checkpoint in the same transaction, so a crash leaves no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from opsledger.indexer.chain import ChainIndexer, RangeRaced, RangeResult
from opsledger.indexer.rpc import RpcError, RpcTransportError
from opsledger.indexer.storage import Batch

__all__ = ["TOO_LARGE", "Backfill", "is_too_large"]

log = logging.getLogger(__name__)

TOO_LARGE = (
    "too many",
    "query returned more than",
    "more than 10000",
    "response size",
    "size limit",
    "limit exceeded",
    "exceeds the limit",
    "block range",
    "range is too large",
    "range too large",
    "timeout",
    "timed out",
    "max results",
    "log response size",
)
SPARSE_LOGS = 2_000  # a range with fewer logs than this lets the next one grow
DENSE_LOGS = 10_000  # a range with more than this makes the next one shrink
RACE_RETRIES = 5


def is_too_large(error: Exception) -> bool:
    if isinstance(error, RpcTransportError):
        return True  # a timeout or a dropped connection on a big range: try smaller
    text = str(error).lower()
    return any(marker in text for marker in TOO_LARGE)


@dataclass(slots=True)
class Progress:
    chain: str
    start: int
    height: int
    target: int
    events: int


class Backfill:
    """Index one chain from its checkpoint up to ``target``."""

    def __init__(
        self,
        indexer: ChainIndexer,
        *,
        on_commit: Callable[[Batch, Progress], None] | None = None,
    ) -> None:
        self.indexer = indexer
        self.config = indexer.config
        self.size = indexer.config.initial_range
        self.on_commit = on_commit
        self.splits = 0

    def resume_block(self) -> int:
        state = self.indexer.store.chain_state(self.indexer.name)
        if state is not None and state.height >= 0:
            return state.height + 1
        return self.config.start_block

    async def run(self, target: int, head: int | None = None) -> int:
        """Commit every block up to ``target``; returns the number of events written."""
        head = target if head is None else head
        start = self.resume_block()
        if start > target:
            return 0
        events = 0
        next_start = start
        in_flight: deque[tuple[int, asyncio.Task[RangeResult]]] = deque()
        try:
            while next_start <= target or in_flight:
                while len(in_flight) < self.config.concurrency and next_start <= target:
                    last = min(target, next_start + self.size - 1)
                    task = asyncio.create_task(self._fetch(next_start, last, head))
                    in_flight.append((next_start, task))
                    next_start = last + 1
                _, task = in_flight.popleft()
                result = await task
                self._adapt(result)
                await self.indexer.complete(result)
                batch = self.indexer.to_batch(result, head)
                self._check_link(batch)
                self.indexer.store.commit(batch, self.config.finality_depth)
                events += batch.events
                if self.on_commit is not None:
                    self.on_commit(
                        batch, Progress(self.indexer.name, start, batch.height, target, events)
                    )
        finally:
            for _, task in in_flight:
                task.cancel()
            for _, task in in_flight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task  # an abandoned prefetch: its error no longer matters
        return events

    def _check_link(self, batch: Batch) -> None:
        """The first block of a batch must extend the last remembered one."""
        first = batch.blocks.get(batch.first_block)
        if first is None:
            return
        previous = self.indexer.store.block_hashes(self.indexer.name).get(batch.first_block - 1)
        if previous is not None and previous[0] != first[1]:
            raise RangeRaced(f"{self.indexer.name}: block {batch.first_block} is on another fork")

    def _adapt(self, result: RangeResult) -> None:
        span = result.last - result.first + 1
        if len(result.logs) < SPARSE_LOGS and span >= self.size:
            self.size = min(self.config.max_range, self.size * 2)
        elif len(result.logs) > DENSE_LOGS:
            self.size = max(1, min(self.size, span) // 2)

    async def _fetch(self, first: int, last: int, head: int) -> RangeResult:
        for attempt in range(RACE_RETRIES):
            try:
                return await self._fetch_split(first, last, head)
            except RangeRaced:
                if attempt == RACE_RETRIES - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _fetch_split(self, first: int, last: int, head: int) -> RangeResult:
        try:
            return await self.indexer.fetch(first, last, head)
        except (RpcError, RpcTransportError) as exc:
            if first == last or not is_too_large(exc):
                raise
            self.splits += 1
            middle = (first + last) // 2
            self.size = max(1, min(self.size, middle - first + 1))
            log.info("%s: splitting %d-%d: %s", self.indexer.name, first, last, exc)
            left = await self._fetch_split(first, middle, head)
            right = await self._fetch_split(middle + 1, last, head)
            merged = RangeResult(
                first, last, left.logs + right.logs, left.addresses & right.addresses
            )
            merged.headers = {**left.headers, **right.headers}
            return merged
