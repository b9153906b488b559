"""The Redis backends: a cache and rate limits shared by gateway replicas."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from opsledger.gateway.cache import RedisCache, cache_key
from opsledger.gateway.config import TierConfig
from opsledger.gateway.ratelimit import RedisLimiter

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/0"


def test_redis_cache_is_shared_and_drops_from_a_fork() -> None:
    genesis = "0x" + secrets.token_hex(32)  # a fresh chain identity per run
    other = "0x" + secrets.token_hex(32)

    async def scenario() -> None:
        one, two = RedisCache(URL, 60), RedisCache(URL, 60)
        try:
            keys = {
                n: cache_key(genesis, "eth_getBlockByNumber", [hex(n), False], None)
                for n in (5, 6, 7)
            }
            for number, key in keys.items():
                await one.set(key, f'"{number}"'.encode(), number)
            pinned = cache_key(genesis, "eth_getBlockByHash", ["0x" + "1" * 64, False], None)
            await one.set(pinned, b"{}", None)
            foreign = cache_key(other, "eth_getBlockByNumber", ["0x7", False], None)
            await one.set(foreign, b'"x"', 7)
            assert await two.get(keys[6]) == b'"6"'  # another replica sees it
            assert await two.drop_from(genesis, 6) == 2
            assert await one.get(keys[6]) is None
            assert await one.get(keys[7]) is None
            assert await one.get(keys[5]) == b'"5"'
            assert await one.get(pinned) == b"{}"
            assert await one.get(foreign) == b'"x"'
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


def test_redis_rate_limit_is_shared_between_replicas() -> None:
    identity = "key:" + secrets.token_hex(8)
    tier = TierConfig(rps=0.1, burst=3)

    async def scenario() -> list[float]:
        one, two = RedisLimiter(URL), RedisLimiter(URL)
        try:
            return [await limiter.take(identity, tier, 1) for limiter in (one, two, one, two)]
        finally:
            await one.close()
            await two.close()

    waits = asyncio.run(scenario())
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] > 0
