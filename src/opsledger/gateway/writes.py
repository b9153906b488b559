"""Writes and stateful calls: never blindly retried, never hedged.

``eth_sendRawTransaction`` goes to one upstream; only a request that provably never left
(connection refused) is tried on another, because a replayed write can double-spend a
nonce slot or leak a transaction the user meant to cancel. With ``broadcast_writes`` it
goes to every upstream at once and the first success is returned. Filters live on one
node, so they always go to the same upstream.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from opsledger.gateway.jsonrpc import INTERNAL_ERROR, NO_UPSTREAM, RpcErrorReply
from opsledger.gateway.upstream import Upstream, UpstreamFailure

if TYPE_CHECKING:
    from opsledger.gateway.proxy import ChainProxy

__all__ = ["sticky", "unwrap", "write"]


async def write(proxy: ChainProxy, method: str, params: list[Any], cost: float) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    deadline = time.monotonic() + proxy.limits.request_timeout_s
    if proxy.chain.broadcast_writes:
        targets = proxy.router.candidates()
        if not targets:
            raise RpcErrorReply(NO_UPSTREAM, f"no healthy upstream for chain {proxy.chain.name}")
        return await _broadcast(proxy, method, targets, body, deadline)
    tried: set[str] = set()
    while True:
        upstream = proxy.router.choose(exclude=tried, cost=cost)
        if upstream is None:
            raise RpcErrorReply(NO_UPSTREAM, f"no healthy upstream for chain {proxy.chain.name}")
        tried.add(upstream.name)
        try:
            data = await proxy.send(method, upstream, body, deadline)
        except UpstreamFailure as exc:
            if not exc.sent:
                continue  # provably never sent: safe to try another upstream
            raise RpcErrorReply(
                INTERNAL_ERROR,
                f"upstream {upstream.name} failed after the write was sent ({exc.reason}); "
                "it was not retried: check the transaction before sending it again",
            ) from None
        await _refresh_after_write(proxy, upstream)
        return unwrap(data)


async def _refresh_after_write(proxy: ChainProxy, upstream: Upstream) -> None:
    """Read-your-writes on instantly mining nodes: learn the writer's new head now."""
    try:
        await asyncio.wait_for(proxy.monitor.probe(upstream), proxy.monitor.health.timeout_s)
    except TimeoutError:
        return
    proxy.monitor.evaluate()


async def _broadcast(
    proxy: ChainProxy, method: str, targets: list[Upstream], body: bytes, deadline: float
) -> bytes:
    pending: set[asyncio.Future[bytes]] = {
        asyncio.ensure_future(proxy.send(method, u, body, deadline)) for u in targets
    }
    first_error: RpcErrorReply | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    continue
                try:
                    return unwrap(task.result())
                except RpcErrorReply as exc:
                    first_error = first_error or exc
    finally:
        # The others keep going: a broadcast is meant to reach every node; the client
        # only waits for the first success.
        proxy.keep(pending)
    raise first_error or RpcErrorReply(NO_UPSTREAM, "every upstream failed the write")


def unwrap(data: bytes) -> bytes:
    """The raw ``result`` of an upstream reply, or its error as ``RpcErrorReply``."""
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        raise RpcErrorReply(INTERNAL_ERROR, "upstream sent an invalid reply")
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        raise RpcErrorReply(
            int(error.get("code", INTERNAL_ERROR)),
            str(error.get("message", "upstream error")),
            error.get("data"),
        )
    return orjson.dumps(reply.get("result"))


async def sticky(proxy: ChainProxy, method: str, params: list[Any]) -> bytes:
    """Filters live on one node: always the first in-rotation upstream, no retries."""
    pool = proxy.router.candidates()
    if not pool:
        raise RpcErrorReply(NO_UPSTREAM, f"no healthy upstream for chain {proxy.chain.name}")
    upstream = min(pool, key=lambda u: u.name)
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    deadline = time.monotonic() + proxy.limits.request_timeout_s
    try:
        data = await proxy.send(method, upstream, body, deadline)
    except UpstreamFailure as exc:
        raise RpcErrorReply(NO_UPSTREAM, f"upstream failed: {exc.reason}") from None
    return unwrap(data)
