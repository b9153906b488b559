"""Rate limits: per API key with tiers and compute-unit method weights, per IP for
anonymous use, and per-upstream compute-unit budgets.

A token bucket (rate, burst) per identity; the in-process buckets serve one replica, the
Redis backend (one Lua script, atomic per key) lets several replicas share the budget.
API keys are stored hashed (``sha256:<hex>``): the gateway compares the hash of what the
client sent, so a leaked config does not leak keys.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from opsledger.gateway.config import KeyConfig, RateLimitConfig, TierConfig

__all__ = [
    "Decision",
    "KeyBook",
    "MemoryLimiter",
    "RateLimiter",
    "RedisLimiter",
    "TokenBucket",
    "hash_key",
]


def hash_key(key: str) -> str:
    """How API keys are stored: ``sha256:<hex>`` of the key text."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; a call costs ``cost`` tokens."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, cost: float = 1.0, now: float | None = None) -> float:
        """0.0 when allowed (tokens spent), else the seconds until ``cost`` is available."""
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def available(self, cost: float = 1.0, now: float | None = None) -> bool:
        self._refill(time.monotonic() if now is None else now)
        return self.tokens >= cost


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    identity: str = ""  # "key:<name>" or "ip:<address>", for metrics


class RateLimiter(Protocol):
    async def take(self, identity: str, tier: TierConfig, cost: float) -> float: ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """In-process buckets, bounded: the least recently used identities are forgotten."""

    def __init__(self, max_identities: int = 100_000) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_identities

    async def take(self, identity: str, tier: TierConfig, cost: float) -> float:
        return self.take_now(identity, tier, cost)

    def take_now(self, identity: str, tier: TierConfig, cost: float) -> float:
        """``take`` without awaiting: in-process buckets never wait (``KeyBook.admit``)."""
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = TokenBucket(tier.rps, tier.burst)
            self._buckets[identity] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
        return bucket.take(cost)

    async def close(self) -> None:
        return None


_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or t
tokens = math.min(burst, tokens + (t - ts) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(t))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisLimiter:
    """Buckets in Redis so that replicas share one budget per identity (time from Redis)."""

    def __init__(self, url: str, prefix: str = "opsledger:gw:rl:") -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url)
        self._script = self._redis.register_script(_LUA)
        self._prefix = prefix

    async def take(self, identity: str, tier: TierConfig, cost: float) -> float:
        wait = await self._script(keys=[self._prefix + identity], args=[tier.rps, tier.burst, cost])
        return float(wait)

    async def close(self) -> None:
        await self._redis.aclose()


class KeyBook:
    """Checks requests against the configured keys, tiers and per-IP limit."""

    def __init__(self, config: RateLimitConfig, limiter: RateLimiter) -> None:
        self.config = config
        self.limiter = limiter
        self._by_hash: dict[str, KeyConfig] = {k.hash: k for k in config.keys}

    def lookup(self, api_key: str) -> KeyConfig | None:
        return self._by_hash.get(hash_key(api_key))

    async def check(self, api_key: str | None, client_ip: str, cost: float) -> Decision | None:
        """None for an unknown API key (the caller answers 401); else the decision."""
        decision = self.admit(api_key, client_ip, lambda: cost)
        if decision is None or isinstance(decision, Decision):
            return decision
        return await decision

    def admit(
        self, api_key: str | None, client_ip: str, cost: Callable[[], float]
    ) -> Decision | Coroutine[Any, Any, Decision] | None:
        """``check`` without a coroutine when nothing needs awaiting (no limit applies,
        or in-process buckets): the HTTP server answers such requests without a task.
        ``cost`` is only computed when a limit applies. A coroutine is returned when
        the limiter is shared (Redis)."""
        if api_key is not None:
            key = self.lookup(api_key)
            if key is None:
                return None
            tier = self.config.tiers[key.tier]
            identity = f"key:{key.name}"
        else:
            if self.config.per_ip is None:
                return _UNLIMITED
            tier = self.config.per_ip
            identity = f"ip:{client_ip}"
        take_now = getattr(self.limiter, "take_now", None)
        if take_now is not None:
            wait: float = take_now(identity, tier, cost())
            return Decision(wait <= 0.0, wait, identity)
        return self._admit_later(identity, tier, cost())

    async def _admit_later(self, identity: str, tier: TierConfig, cost: float) -> Decision:
        wait = await self.limiter.take(identity, tier, cost)
        return Decision(wait <= 0.0, wait, identity)


_UNLIMITED = Decision(True, identity="ip")  # anonymous use without a per-IP limit
