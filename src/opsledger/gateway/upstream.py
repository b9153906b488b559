"""One upstream node: its HTTP client, what the gateway knows about it, its breaker.

State lives here so that routing, health and the proxy read one place: the last head
seen (from probes and from real traffic), an EWMA of latency and a window for its p95
(hedging waits that long), the number of outstanding requests, and a circuit breaker
(closed → open after consecutive failures → half-open after a cooldown, closed again
on one good probe).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from opsledger.gateway.config import HealthConfig, UpstreamConfig
from opsledger.gateway.httpclient import ConnectFailed, HttpPool, ResponseFailed
from opsledger.gateway.ratelimit import TokenBucket

__all__ = ["Breaker", "RpcError", "Upstream", "UpstreamFailure"]


class Breaker(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class UpstreamFailure(Exception):
    """The upstream could not answer (connection, timeout, 5xx, unparsable body).

    ``sent`` is False only when the request provably never left (connection refused):
    the one case where even a write may be tried elsewhere.
    """

    def __init__(self, reason: str, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


@dataclass
class Upstream:
    config: UpstreamConfig
    health: HealthConfig
    client: HttpPool | None = None  # set by ``Gateway.start``: keep-alive connections
    head: int = -1
    head_hash: str | None = None
    syncing: bool = False
    genesis_ok: bool = True
    genesis_checked: bool = False  # not in rotation before its block 0 was compared
    ewma_ms: float = 50.0
    outstanding: int = 0
    breaker: Breaker = Breaker.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    lagging: bool = False
    slow: bool = False
    probed: bool = False
    peers: int | None = None  # net_peerCount, when the node answers it
    state_reason: str = "starting"
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    budget: TokenBucket | None = None
    _p95: float | None = None
    _observed: int = 0
    # Block number -> hash for recent heads of this upstream: reorg detection.
    recent_hashes: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config.cu_per_second > 0:
            rate = self.config.cu_per_second
            self.budget = TokenBucket(rate, rate)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_rotation(self) -> bool:
        return (
            self.probed
            and self.genesis_checked
            and self.genesis_ok
            and self.breaker is Breaker.CLOSED
            and not self.lagging
            and not self.syncing
            and not self.slow
        )

    @property
    def state(self) -> str:
        """One word for metrics, the admin endpoint and the ledger."""
        if not self.probed:
            return "starting"
        if self.breaker is not Breaker.CLOSED:
            return str(self.breaker.value)
        if not self.genesis_ok:
            return "wrong_chain"
        if self.syncing:
            return "syncing"
        if self.lagging:
            return "lagging"
        if self.slow:
            return "slow"
        return "healthy"

    def p95_ms(self) -> float:
        """p95 of the last 200 latencies, recomputed every 32 observations (a sort per
        request would cost more than the rest of the routing decision)."""
        if self._p95 is None:
            if len(self._latencies) < 10:
                return max(self.ewma_ms * 3, 1.0)
            ordered = sorted(self._latencies)
            self._p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return self._p95

    def observe(self, latency_ms: float) -> None:
        self.ewma_ms = 0.8 * self.ewma_ms + 0.2 * latency_ms
        self._latencies.append(latency_ms)
        self._observed += 1
        if self._observed % 32 == 0 or len(self._latencies) < 40:
            self._p95 = None

    def succeeded(self) -> None:
        self.failures = 0
        if self.breaker is not Breaker.CLOSED:
            self.breaker = Breaker.CLOSED

    def failed(self, now: float | None = None) -> None:
        self.failures += 1
        if self.breaker is Breaker.HALF_OPEN or self.failures >= self.health.failure_threshold:
            self.breaker = Breaker.OPEN
            self.opened_at = time.monotonic() if now is None else now

    def may_probe(self, now: float | None = None) -> bool:
        """Open breakers let one probe through after the cooldown (half-open)."""
        if self.breaker is Breaker.OPEN:
            current = time.monotonic() if now is None else now
            if current - self.opened_at >= self.health.cooldown_s:
                self.breaker = Breaker.HALF_OPEN
                return True
            return False
        return True

    def note_head(self, number: int, block_hash: str | None = None) -> None:
        if number > self.head or (block_hash and number == self.head):
            self.head = number
            self.head_hash = block_hash or self.head_hash
        if block_hash:
            self.recent_hashes[number] = block_hash
            if len(self.recent_hashes) > 256:
                for old in sorted(self.recent_hashes)[: len(self.recent_hashes) - 256]:
                    del self.recent_hashes[old]

    def check_reorg(self, number: int, block_hash: str, parent_hash: str) -> int | None:
        """The fork point if ``(number, hash, parent)`` contradicts what was seen before."""
        fork: int | None = None
        known = self.recent_hashes.get(number)
        if known is not None and known != block_hash:
            fork = number
        parent = self.recent_hashes.get(number - 1)
        if parent is not None and parent != parent_hash:
            fork = number - 1
        if fork is not None:
            # Forget everything from the fork point up: it belongs to the old branch.
            for seen in [n for n in self.recent_hashes if n >= fork]:
                del self.recent_hashes[seen]
            if self.head >= fork:
                self.head = number
        self.recent_hashes[number - 1] = parent_hash
        self.note_head(number, block_hash)
        return fork

    def start(self, body: bytes, timeout: float) -> asyncio.Future[bytes]:
        """``post`` as a future instead of a coroutine: no task when the client has an
        idle connection (``HttpPool.start``), else ``post`` in a task."""
        client = self.client
        raw = client.start(body, timeout) if client is not None else None
        if raw is None:
            return asyncio.ensure_future(self.post(body, timeout))
        self.outstanding += 1
        result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        raw.add_done_callback(lambda done: self._settle(done, result, started, timeout))
        return result

    def _settle(
        self,
        raw: asyncio.Future[tuple[int, bytes]],
        result: asyncio.Future[bytes],
        started: float,
        timeout: float,
    ) -> None:
        self.outstanding -= 1
        if result.done():
            return  # cancelled by the caller
        try:
            status, data = raw.result()
            result.set_result(self._checked(status, data, started))
        except asyncio.CancelledError:
            result.cancel()
        except TimeoutError:
            result.set_exception(UpstreamFailure(f"timed out after {timeout:.2f}s"))
        except ResponseFailed as exc:
            result.set_exception(UpstreamFailure(str(exc)))
        except UpstreamFailure as exc:
            result.set_exception(exc)

    def _checked(self, status: int, data: bytes, started: float) -> bytes:
        if status >= 500 or status == 429:
            raise UpstreamFailure(f"HTTP {status}")
        if status >= 400 and not data.startswith((b"{", b"[")):
            raise UpstreamFailure(f"HTTP {status}")
        self.observe((time.perf_counter() - started) * 1000)
        return data

    async def post(self, body: bytes, timeout: float) -> bytes:
        """POST a JSON-RPC payload; the raw response body, or ``UpstreamFailure``."""
        if self.client is None:
            raise UpstreamFailure("no HTTP client", sent=False)
        started = time.perf_counter()
        self.outstanding += 1
        try:
            status, data = await self.client.post(body, timeout)
        except ConnectFailed as exc:
            raise UpstreamFailure(f"connection refused: {exc}", sent=False) from exc
        except TimeoutError as exc:
            raise UpstreamFailure(f"timed out after {timeout:.2f}s") from exc
        except ResponseFailed as exc:
            raise UpstreamFailure(str(exc)) from exc
        finally:
            self.outstanding -= 1
        return self._checked(status, data, started)

    async def rpc(self, method: str, params: list[Any], timeout: float) -> Any:
        """One call for probes: the ``result``, or ``UpstreamFailure``/``RpcError``."""
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        data = await self.post(body, timeout)
        try:
            reply = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure("unparsable response") from exc
        if not isinstance(reply, dict):
            raise UpstreamFailure("response is not a JSON-RPC object")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise RpcError(int(error.get("code", -32603)), str(error.get("message", "")))
        return reply.get("result")


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
