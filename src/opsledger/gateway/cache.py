"""Finality-aware, reorg-safe response cache.

What may be cached, and for how long, is decided by ``cache_policy`` from the method,
its resolved block and the chain view: results pinned to a block hash or to a block at
or below the finalized height are kept until evicted; results for unfinalized blocks
(and ``latest``-dependent ones) are keyed by the view's generation, so they live until
the next head; nulls, empty results for unfinalized ranges and errors are never cached.
Every entry remembers its block so that a reorg drops everything from the fork point up.

Keys carry the chain's genesis hash, not its chain id: two dev chains with the same id
never share entries.

Backends: an in-process LRU bounded by bytes (``MemoryCache``), and Redis
(``RedisCache``) when several replicas share one cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from opsledger.gateway.methods import (
    BLOCK_PARAM,
    CHAIN_CONSTANT,
    HASH_PINNED,
    HEAD_SCOPED,
    TX_PINNED,
)

__all__ = [
    "Cache",
    "CacheDecision",
    "MemoryCache",
    "NoCache",
    "RedisCache",
    "cache_key",
    "cache_policy",
]


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """Before the call: may the result be looked up/stored, and under which scope."""

    cacheable: bool
    block: int | None = None  # highest block the result depends on (for reorg drops)
    scoped: bool = False  # True: keyed by the view generation (lives until the next head)


NOT_CACHEABLE = CacheDecision(False)


def _block_number(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def cache_policy(method: str, params: list[Any], finalized: int) -> CacheDecision:
    """Decide from the *resolved* params (tags already replaced by numbers)."""
    if method in CHAIN_CONSTANT:
        return CacheDecision(True)
    if method in HASH_PINNED:
        return CacheDecision(True)
    if method in HEAD_SCOPED:
        return CacheDecision(True, scoped=True)
    if method in TX_PINNED:
        return CacheDecision(True)  # stored only if final: see ``storable``
    index = BLOCK_PARAM.get(method)
    if index is not None:
        if len(params) <= index:
            return NOT_CACHEABLE
        param = params[index]
        if isinstance(param, dict) and "blockHash" in param:  # EIP-1898
            return CacheDecision(True)
        number = _block_number(param)
        if number is None:
            return NOT_CACHEABLE
        return CacheDecision(True, number, scoped=number > finalized)
    if method == "eth_getLogs" and params and isinstance(params[0], dict):
        flt = params[0]
        if "blockHash" in flt:
            return CacheDecision(True)
        to_block = _block_number(flt.get("toBlock"))
        from_block = _block_number(flt.get("fromBlock"))
        if to_block is None or from_block is None:
            return NOT_CACHEABLE
        return CacheDecision(True, to_block, scoped=to_block > finalized)
    return NOT_CACHEABLE


def storable(method: str, decision: CacheDecision, result: Any, finalized: int) -> CacheDecision:
    """After the call: the decision for this result (nulls and unfinal empties are not kept)."""
    if not decision.cacheable or result is None:
        return NOT_CACHEABLE
    if method in TX_PINNED:
        number = _block_number(result.get("blockNumber")) if isinstance(result, dict) else None
        if number is None or number > finalized:
            return NOT_CACHEABLE
        return CacheDecision(True, number)
    if decision.scoped and result in ([], "0x", {}):
        return NOT_CACHEABLE
    return decision


def cache_key(genesis: str, method: str, params: list[Any], generation: str | None) -> str:
    """``genesis|method|digest(params)[|generation]``: chain identity first, always."""
    digest = hashlib.blake2b(orjson.dumps(params, option=orjson.OPT_SORT_KEYS), digest_size=16)
    key = f"{genesis}|{method}|{digest.hexdigest()}"
    return f"{key}|{generation}" if generation is not None else key


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, block: int | None) -> None: ...

    async def drop_from(self, genesis: str, block: int) -> int: ...

    async def close(self) -> None: ...


class NoCache:
    async def get(self, key: str) -> bytes | None:
        return None

    def get_now(self, key: str) -> bytes | None:
        return None  # nothing to await: single reads take the task-free path

    async def set(self, key: str, value: bytes, block: int | None) -> None:
        return None

    async def drop_from(self, genesis: str, block: int) -> int:
        return 0

    async def close(self) -> None:
        return None


class MemoryCache:
    """LRU bounded by the bytes of keys and values (not by entry count: one getLogs
    answer can weigh as much as ten thousand balances)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, tuple[bytes, int | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        """``get`` without awaiting: lets the proxy answer a hit without a task."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, block: int | None) -> None:
        weight = len(key) + len(value)
        if weight > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(key) + len(old[0])
        self._entries[key] = (value, block)
        self.size += weight
        while self.size > self.max_bytes:
            evicted, (data, _) = self._entries.popitem(last=False)
            self.size -= len(evicted) + len(data)

    async def drop_from(self, genesis: str, block: int) -> int:
        prefix = genesis + "|"
        doomed = [
            k
            for k, (_, b) in self._entries.items()
            if b is not None and b >= block and k.startswith(prefix)
        ]
        for key in doomed:
            data, _ = self._entries.pop(key)
            self.size -= len(key) + len(data)
        return len(doomed)

    async def close(self) -> None:
        self._entries.clear()
        self.size = 0


class RedisCache:
    """Entries in Redis (``prefix`` + block + key) with a TTL; a reorg deletes by scan.

    The block number sits in the Redis key so that ``drop_from`` can find the entries at
    or above a fork point without a secondary index; reorgs are rare, scans are cheap.
    """

    def __init__(self, url: str, ttl_s: int, prefix: str = "opsledger:gw:c:") -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url)
        self._ttl = ttl_s
        self._prefix = prefix

    def _name(self, key: str, block: int | None) -> str:
        genesis, _, rest = key.partition("|")
        tag = "-" if block is None else str(block)
        digest = hashlib.blake2b(rest.encode(), digest_size=16).hexdigest()
        return f"{self._prefix}{genesis}:{tag}:{digest}"

    async def get(self, key: str) -> bytes | None:
        # The block is part of the Redis name but not of the lookup key: look up the
        # name under which this replica (or another) stored it through an index entry.
        pointer = await self._redis.get(self._prefix + "i:" + key)
        if pointer is None:
            return None
        value: bytes | None = await self._redis.get(pointer)
        return value

    async def set(self, key: str, value: bytes, block: int | None) -> None:
        name = self._name(key, block)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(name, value, ex=self._ttl)
            pipe.set(self._prefix + "i:" + key, name, ex=self._ttl)
            await pipe.execute()

    async def drop_from(self, genesis: str, block: int) -> int:
        dropped = 0
        async for raw in self._redis.scan_iter(match=f"{self._prefix}{genesis}:*", count=1000):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            tag = name[len(self._prefix) + len(genesis) + 1 :].partition(":")[0]
            if tag != "-" and int(tag) >= block:
                dropped += int(await self._redis.delete(name))
        return dropped

    async def close(self) -> None:
        await self._redis.aclose()
