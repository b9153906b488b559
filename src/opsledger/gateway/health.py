"""Health of a chain's upstreams and the gateway's agreed view of that chain.

Each upstream is probed on its own task (a hung node never delays the others' probes):
``eth_getBlockByNumber("latest")`` gives head number, hash and parent hash in one call
(head tracking and reorg detection), ``eth_syncing`` says whether the node is catching
up, and block 0's hash is checked once against the chain's genesis (an upstream on
another chain is never used: two dev chains with one chain id are different chains).
Real traffic adds passive signals through ``Upstream.succeeded``/``failed``.

The view's head is the highest head an in-rotation upstream has reached and it never
goes backwards for clients, except on a detected reorg, where the new branch is the
truth and everything cached above the fork point is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opsledger.gateway.config import ChainConfig, HealthConfig
from opsledger.gateway.upstream import Breaker, RpcError, Upstream, UpstreamFailure

__all__ = ["ChainView", "HealthMonitor", "StateChange"]

log = logging.getLogger(__name__)

StateChange = Callable[[str, Upstream, str, str], None]  # chain, upstream, state, reason
ReorgHandler = Callable[[int], Awaitable[None]]


@dataclass
class ChainView:
    """What the gateway tells clients about a chain: one head, one genesis."""

    config: ChainConfig
    head: int = -1
    head_hash: str | None = None
    genesis: str | None = None
    reorgs: int = 0
    recent: dict[int, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finalized(self) -> int:
        return max(-1, self.head - self.config.finality_depth) if self.head >= 0 else -1

    @property
    def generation(self) -> str:
        """Changes with every new head or reorg: unfinalized cache entries are scoped
        to it, so a result that depends on ``latest`` lives until the next head."""
        return f"{self.head}:{self.head_hash or ''}:{self.reorgs}"

    def advance(self, number: int, block_hash: str | None = None) -> bool:
        if number > self.head:
            self.head = number
            self.head_hash = block_hash
            self.changed.set()
            self.changed = asyncio.Event()
            return True
        if number == self.head and block_hash and self.head_hash is None:
            self.head_hash = block_hash
        return False

    def rewind(self, fork: int, new_head: int, new_hash: str | None) -> None:
        """A reorg: the new branch is the truth from ``fork`` up."""
        self.reorgs += 1
        self.head = new_head
        self.head_hash = new_hash
        for number in [n for n in self.recent if n >= fork]:
            del self.recent[number]
        self.changed.set()
        self.changed = asyncio.Event()


class HealthMonitor:
    """Probes one chain's upstreams, keeps them in or out of rotation, moves the view."""

    def __init__(
        self,
        chain: ChainConfig,
        upstreams: list[Upstream],
        health: HealthConfig,
        view: ChainView,
        *,
        on_state: StateChange | None = None,
        on_reorg: ReorgHandler | None = None,
    ) -> None:
        self.chain = chain
        self.upstreams = upstreams
        self.health = health
        self.view = view
        self.on_state = on_state
        self.on_reorg = on_reorg
        self._tasks: list[asyncio.Task[None]] = []
        self._states: dict[str, str] = {}
        self._ticks: dict[str, int] = {}

    async def start(self) -> None:
        # One synchronous round first, so the gateway is ready when ``start`` returns.
        await asyncio.gather(*(self.probe(u) for u in self.upstreams))
        self.evaluate()
        self._tasks = [asyncio.create_task(self._loop(u)) for u in self.upstreams]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, upstream: Upstream) -> None:
        while True:
            await asyncio.sleep(self.health.interval_s)
            try:
                await self.probe(upstream)
                self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one probe must not stop health checking
                log.exception("probe of %s failed unexpectedly", upstream.name)

    async def probe(self, upstream: Upstream) -> None:
        """One round of probes for ``upstream``; failures feed its circuit breaker."""
        if not upstream.may_probe():
            return
        timeout = self.health.timeout_s
        try:
            if not upstream.genesis_checked or self._tick(upstream) % 30 == 0:
                await self._check_genesis(upstream, timeout)
            block, syncing = await asyncio.gather(
                upstream.rpc("eth_getBlockByNumber", ["latest", False], timeout),
                upstream.rpc("eth_syncing", [], timeout),
            )
        except (UpstreamFailure, RpcError) as exc:
            upstream.failed()
            upstream.state_reason = str(exc)
            upstream.probed = True
            return
        upstream.probed = True
        upstream.succeeded()
        upstream.syncing = bool(syncing)
        if self._ticks.get(upstream.name, 0) % 10 == 1:
            await self._peer_count(upstream, timeout)
        if isinstance(block, dict):
            await self.note_block(upstream, block)

    async def _peer_count(self, upstream: Upstream, timeout: float) -> None:
        """Shown, not enforced: dev nodes and some providers report 0 peers or refuse."""
        try:
            peers = await upstream.rpc("net_peerCount", [], timeout)
        except (UpstreamFailure, RpcError):
            upstream.peers = None
            return
        try:
            upstream.peers = int(peers, 16) if isinstance(peers, str) else None
        except ValueError:
            upstream.peers = None

    def _tick(self, upstream: Upstream) -> int:
        self._ticks[upstream.name] = self._ticks.get(upstream.name, 0) + 1
        return self._ticks[upstream.name]

    async def _check_genesis(self, upstream: Upstream, timeout: float) -> None:
        block = await upstream.rpc("eth_getBlockByNumber", ["0x0", False], timeout)
        found = str(block.get("hash", "")).lower() if isinstance(block, dict) else ""
        expected = self.chain.genesis_hash or self.view.genesis
        if expected is None and found:
            self.view.genesis = found
            expected = found
        upstream.genesis_checked = True
        upstream.genesis_ok = bool(found) and found == expected
        if not upstream.genesis_ok:
            upstream.state_reason = f"genesis {found or 'unknown'} is not the chain's {expected}"

    async def note_block(self, upstream: Upstream, block: dict[str, Any]) -> None:
        """A head block seen from ``upstream`` (probe or traffic): head and reorgs."""
        try:
            number = int(block["number"], 16)
            block_hash = str(block["hash"])
            parent = str(block["parentHash"])
        except (KeyError, TypeError, ValueError):
            return
        before = dict(upstream.recent_hashes)
        fork = upstream.check_reorg(number, block_hash, parent)
        gap = number - 1 not in before and any(n < number for n in before)
        if fork is not None or gap:
            # Walk back through what was seen before: a revert replaces every block
            # above the fork point, not only the one at the clashing height (and a
            # head that jumped past the old one clashes at no height at all).
            top = fork if fork is not None else number - 1
            below = sorted((n for n in before if n < top), reverse=True)
            deeper = await self._verify_ancestry(upstream, below, before)
            if deeper is not None:
                fork = deeper if fork is None else min(fork, deeper)
        await self._backfill(upstream, number - 1)
        if fork is not None:
            await self._reorg(fork, upstream)
        if upstream.in_rotation or not upstream.probed:
            self.view.advance(number, block_hash)

    async def _verify_ancestry(
        self, upstream: Upstream, known: list[int], expected_hashes: dict[int, str]
    ) -> int | None:
        """The lowest replaced height among ``known`` (newest first), walked back at most
        64 blocks; None when the newest known block is still on the chain."""
        fork: int | None = None
        if not known:
            return None
        for number in known[:64]:
            expected = expected_hashes.get(number)
            try:
                block = await upstream.rpc(
                    "eth_getBlockByNumber", [hex(number), False], self.health.timeout_s
                )
            except (UpstreamFailure, RpcError):
                return fork
            found = block.get("hash") if isinstance(block, dict) else None
            if found == expected:
                return fork
            fork = number
            if isinstance(found, str):
                upstream.recent_hashes[number] = found
        # Every block we remembered was replaced: the fork is deeper than our memory,
        # so drop everything (rare, and the only safe answer).
        return 0

    async def _backfill(self, upstream: Upstream, number: int) -> None:
        """Remember the hashes of the blocks between the last seen head and ``number``
        (at most 32 per probe) so that a later reorg finds its true fork point."""
        known = [n for n in upstream.recent_hashes if n < number]
        if not known:
            return
        missing = [n for n in range(max(known) + 1, number) if n not in upstream.recent_hashes]
        for height in missing[-32:]:
            try:
                block = await upstream.rpc(
                    "eth_getBlockByNumber", [hex(height), False], self.health.timeout_s
                )
            except (UpstreamFailure, RpcError):
                return
            if isinstance(block, dict) and isinstance(block.get("hash"), str):
                upstream.recent_hashes[height] = block["hash"]

    async def note_new_head(self, header: dict[str, Any]) -> None:
        """A ``newHeads`` notification (from the WebSocket hub): detect reorgs early."""
        try:
            number = int(header["number"], 16)
            block_hash = str(header["hash"])
            parent = str(header["parentHash"])
        except (KeyError, TypeError, ValueError):
            return
        recent = self.view.recent
        fork: int | None = None
        if recent.get(number) not in (None, block_hash):
            fork = number
        if recent.get(number - 1) not in (None, parent):
            fork = number - 1
        if fork is not None:
            # The true fork point may lie below what the hub has seen: let every
            # upstream's probe walk its own remembered ancestry; if none finds the
            # reorg, drop conservatively from the oldest head the hub reported.
            seen = self.view.reorgs
            await asyncio.gather(*(self.probe(u) for u in self.upstreams))
            self.evaluate()
            if self.view.reorgs == seen:
                await self._reorg(min([fork, *recent]), None, number, block_hash)
        recent[number] = block_hash
        recent[number - 1] = parent
        for old in sorted(recent)[:-256]:
            del recent[old]

    def note_hub_head(self, upstream: Upstream, header: dict[str, Any]) -> None:
        """A head pushed by ``upstream`` over WebSocket: it has this block now."""
        try:
            number = int(header["number"], 16)
        except (KeyError, TypeError, ValueError):
            return
        # The head only: remembered hashes come from probes, which check the ancestry
        # before they overwrite anything (a reorg must not be papered over).
        upstream.note_head(number)
        if upstream.in_rotation:
            self.view.advance(number)

    async def _reorg(
        self,
        fork: int,
        upstream: Upstream | None,
        number: int | None = None,
        block_hash: str | None = None,
    ) -> None:
        log.warning("chain %s: reorg from block %d", self.chain.name, fork)
        if upstream is not None:
            number, block_hash = upstream.head, upstream.head_hash
        self.view.rewind(fork, max(number or 0, fork - 1), block_hash)
        if self.on_reorg is not None:
            await self.on_reorg(fork)

    def evaluate(self) -> None:
        """Take lagging, syncing, slow or tripped upstreams out of rotation."""
        alive = [u for u in self.upstreams if u.probed and u.genesis_ok and u.head >= 0]
        alive_closed = [u for u in alive if u.breaker is Breaker.CLOSED]
        best = max((u.head for u in alive_closed), default=-1)
        fastest = min((u.ewma_ms for u in alive_closed), default=0.0)
        for upstream in self.upstreams:
            lag = best - upstream.head
            upstream.lagging = upstream.head < 0 or lag > self.health.max_lag_blocks
            upstream.slow = (
                upstream.ewma_ms > 100.0 and upstream.ewma_ms > fastest * self.health.slow_factor
            )
            reason = self._reason(upstream, lag)
            state = upstream.state
            if self._states.get(upstream.name) != state:
                self._states[upstream.name] = state
                if self.on_state is not None:
                    self.on_state(self.chain.name, upstream, state, reason)
            upstream.state_reason = reason
        rotation = [u for u in self.upstreams if u.in_rotation]
        if rotation:
            top = max(rotation, key=lambda u: u.head)
            self.view.advance(top.head, top.head_hash)

    def _reason(self, upstream: Upstream, lag: int) -> str:
        if upstream.breaker is not Breaker.CLOSED:
            return f"circuit {upstream.breaker.value}: {upstream.state_reason}"
        if not upstream.genesis_ok:
            return upstream.state_reason
        if upstream.syncing:
            return "eth_syncing reports the node is syncing"
        if upstream.lagging:
            return f"head {upstream.head} lags the best by {lag} blocks"
        if upstream.slow:
            return f"latency EWMA {upstream.ewma_ms:.0f} ms"
        return "probes pass"

    async def wait_for_head(self, number: int, timeout: float) -> bool:
        """Wait (bounded) until an in-rotation upstream reaches ``number``."""
        deadline = time.monotonic() + timeout
        while True:
            if any(u.in_rotation and u.head >= number for u in self.upstreams):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.gather(
                *(self.probe(u) for u in self.upstreams if u.in_rotation and u.head < number)
            )
            self.evaluate()
            if not any(u.in_rotation and u.head >= number for u in self.upstreams):
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
