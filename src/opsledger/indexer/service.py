"""The indexer loop: per chain, backfill from the checkpoint, then follow the head.

Chains run concurrently in one event loop and share one store (its writes are short and
serialised). ``once=True`` stops each chain when it reaches the head it saw, which is
what ``opsledger index --once`` and the tests use. Evidence (run started, reorgs) goes to
the ``Recorder``; numbers go to Prometheus metrics and to the store's ``_indexer_chains``
row, which ``opsledger index status`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opsledger.client.base import NullRecorder, Recorder
from opsledger.core import UpstreamError
from opsledger.indexer.backfill import Progress
from opsledger.indexer.chain import ChainIndexer, table_specs
from opsledger.indexer.config import IndexerConfig
from opsledger.indexer.follow import Follower, Reorg
from opsledger.indexer.ledger import record_reorg, record_started
from opsledger.indexer.rpc import RpcClient, RpcError, RpcTransportError
from opsledger.indexer.storage import Batch, Store

if TYPE_CHECKING:
    from opsledger.indexer.metrics import IndexerMetrics

__all__ = ["ChainStatus", "IndexerService", "status"]

log = logging.getLogger(__name__)

RATE_WINDOW = 10.0  # seconds of commits behind the events/s figure


class _Rate:
    """Events per second over the last ``RATE_WINDOW`` seconds (or since the start)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.points: deque[tuple[float, int]] = deque()

    def add(self, events: int) -> float:
        now = time.monotonic()
        if events:
            self.points.append((now, events))
        while self.points and now - self.points[0][0] > RATE_WINDOW:
            self.points.popleft()
        since = max(self.started, now - RATE_WINDOW)
        return sum(e for _, e in self.points) / max(now - since, 1e-3)


class IndexerService:
    def __init__(
        self,
        config: IndexerConfig,
        recorder: Recorder | None = None,
        *,
        metrics: IndexerMetrics | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        store: Store | None = None,
        with_metrics: bool = True,
    ) -> None:
        """``with_metrics=False`` (and no ``metrics``): count nothing for Prometheus, for a
        run nobody can scrape (``opsledger index --once`` without an API or ``metrics``);
        it also spares that run importing prometheus_client (~20 ms)."""
        self.config = config
        self.recorder = recorder or NullRecorder()
        if metrics is None and with_metrics:
            from opsledger.indexer.metrics import IndexerMetrics

            metrics = IndexerMetrics()
        self.metrics = metrics
        self.on_progress = on_progress
        self._store = store
        self._owns_store = store is None
        self.reorgs: list[Reorg] = []
        self.rpcs: dict[str, RpcClient] = {}

    def open_store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.config.database)
        # Lookup indexes wait until each chain has caught up once (``_chain``).
        self._store.ensure_tables(table_specs(self.config.chains), defer_indexes=True)
        return self._store

    async def run(self, *, once: bool = False, stop: asyncio.Event | None = None) -> None:
        store = self.open_store()
        stop = stop or asyncio.Event()
        if self.config.metrics and not once and self.metrics is not None:
            self.metrics.serve(self.config.metrics)
        record_started(
            self.recorder,
            self.config.digest,
            [c.name for c in self.config.chains],
            self.config.database,
            once,
        )
        self.recorder.flush()
        try:
            await asyncio.gather(
                *(self._chain(chain, store, once, stop) for chain in range(len(self.config.chains)))
            )
        finally:
            for rpc in self.rpcs.values():
                await rpc.close()
            self.recorder.flush()
            if self._owns_store and self._store is not None:
                self._store.close()
                self._store = None

    async def _chain(self, index: int, store: Store, once: bool, stop: asyncio.Event) -> None:
        config = self.config.chains[index]
        rpc = RpcClient(config.rpc, timeout=config.timeout, max_connections=config.concurrency * 2)
        self.rpcs[config.name] = rpc
        indexer = ChainIndexer(config, store, rpc)
        rate = _Rate()
        labels = {"chain": config.name}

        metrics = self.metrics

        def committed(batch: Batch, progress: Progress) -> None:
            eps = rate.add(batch.events)
            if metrics is not None:
                metrics.height.labels(**labels).set(batch.height)
                metrics.events.labels(**labels).inc(batch.events)
                metrics.events_per_second.labels(**labels).set(eps)
            if self.on_progress is not None:
                self.on_progress(progress)

        def reorged(reorg: Reorg) -> None:
            self.reorgs.append(reorg)
            if metrics is not None:
                metrics.reorgs.labels(**labels).inc()
                metrics.reorg_depth.labels(**labels).observe(reorg.depth)
            record_reorg(self.recorder, reorg)

        follower = Follower(indexer, on_commit=committed, on_reorg=reorged)
        indexed = False
        while True:
            try:
                await follower.step()
            except (RpcError, RpcTransportError) as exc:
                if once:
                    raise UpstreamError(f"chain {config.name}: {exc}", chain=config.name) from exc
                # Following: a node that is down or flaky is retried at the next poll.
                log.warning("chain %s: %s (retrying)", config.name, exc)
            else:
                if not indexed:
                    store.ensure_indexes()  # caught up: build the deferred lookup indexes
                    indexed = True
            state = store.chain_state(config.name)
            height = state.height if state else -1
            store.set_head(config.name, follower.head, rate.add(0))
            if metrics is not None:
                metrics.head.labels(**labels).set(follower.head)
                metrics.lag.labels(**labels).set(max(0, follower.head - height))
                metrics.rpc_calls.labels(**labels).set(rpc.stats.calls)
                metrics.rpc_errors.labels(**labels).set(rpc.stats.errors)
            if once or stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.poll_interval)
            if stop.is_set():
                return


@dataclass(frozen=True, slots=True)
class ChainStatus:
    chain: str
    head: int
    height: int
    lag: int
    events: int
    events_per_second: float
    reorgs: int
    max_reorg_depth: int
    head_live: bool  # head read from the node now (else: last seen by the indexer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "head": self.head,
            "height": self.height,
            "lag": self.lag,
            "events": self.events,
            "events_per_second": round(self.events_per_second, 1),
            "reorgs": self.reorgs,
            "max_reorg_depth": self.max_reorg_depth,
            "head_live": self.head_live,
        }


async def status(config: IndexerConfig, store: Store | None = None) -> list[ChainStatus]:
    """Per configured chain: head (asked of the node, else last seen), height, lag, ..."""
    own = store is None
    db = store or Store.open(config.database)
    out = []
    try:
        for chain in config.chains:
            state = db.chain_state(chain.name)
            head, live = (state.head if state else -1), False
            async with RpcClient(chain.rpc, timeout=3.0, retries=0) as rpc:
                # An unreachable node must not stop status from printing what is stored.
                with contextlib.suppress(RpcTransportError, RpcError):
                    head, live = await rpc.block_number(), True
            height = state.height if state else -1
            out.append(
                ChainStatus(
                    chain=chain.name,
                    head=head,
                    height=height,
                    lag=max(0, head - height) if head >= 0 else 0,
                    events=state.events if state else 0,
                    events_per_second=state.events_per_second if state else 0.0,
                    reorgs=state.reorgs if state else 0,
                    max_reorg_depth=state.max_reorg_depth if state else 0,
                    head_live=live,
                )
            )
    finally:
        if own:
            db.close()
    return out
