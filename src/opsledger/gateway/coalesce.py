"""Identical in-flight reads share one upstream call.

A thundering herd (every dApp tab asking for the same block as it appears) becomes one
upstream request; the followers await the leader's future. Only idempotent reads are
coalesced, keyed like the cache (chain genesis, method, resolved params).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

__all__ = ["Coalescer"]

T = TypeVar("T")


class Coalescer:
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self.coalesced = 0

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(result, shared)``: ``shared`` is True when another caller made the call."""
        existing = self._inflight.get(key)
        if existing is not None:
            self.coalesced += 1
            # shield: one follower's cancellation must not cancel the leader's call.
            return cast(T, await asyncio.shield(existing)), True
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await call()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            elif not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: there may be no follower
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self._inflight[key]
