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
import gc
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
# The first range of a run is ``size / RAMP`` blocks and each next one doubles up to
# ``size``: the first reply comes back (and decoding starts) while the node still works on
# the larger ranges behind it, instead of everything waiting for one big first range.
# Measured on a 24,000-event backfill: decoding started after ~35 ms instead of ~190 ms.
RAMP = 8

# GC: a backfill allocates hundreds of thousands of short-lived objects per range (the
# parsed ``eth_getLogs`` reply, one tuple per row), almost none of them in reference
# cycles. CPython's cyclic collector would scan them, and every long-lived object, many
# times over: measured ~20 % of a 24,000-event backfill's CPU (JSON parsing, decoding and
# the commit all slowed). So ``Backfill.run`` pauses the collector while it runs. Between
# ranges, once more than ``GC_YOUNG_LIMIT`` objects allocated since the last collection
# are still alive (a range's own objects are freed by then, so these are prefetched
# replies, caches, or garbage cycles), it collects the youngest generation: cyclic
# garbage stays bounded on a backfill of any length, and a short one never pays for it.
GC_YOUNG_LIMIT = 1_000_000


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
        ramp = max(1, self.size // RAMP)  # see ``RAMP``
        collector = gc.isenabled()
        gc.disable()  # see ``GC``
        try:
            while next_start <= target or in_flight:
                while len(in_flight) < self.config.concurrency and next_start <= target:
                    size = min(self.size, ramp)
                    ramp *= 2
                    last = min(target, next_start + size - 1)
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
                del result, batch
                if collector and gc.get_count()[0] > GC_YOUNG_LIMIT:
                    gc.collect(0)
        finally:
            if collector:
                gc.enable()
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
