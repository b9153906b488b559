"""Batches split per upstream: one upstream batch per upstream instead of one call per item.

Clients such as ethers.js batch by default, so a batch of N reads would otherwise cost N
upstream round trips. Each item is planned as on the single path (validation, tag
resolution, cache, routing by the block it needs); plain reads for the same upstream are
sent together as one JSON-RPC batch; their answers are put back in request order. Any
item that is not a plain read, or whose answer needs more care (a failure, an error
meaning "behind", a suspect null), is answered on the single path, with its retries and
hedging. Grouping is an optimisation only: it never changes an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from opsledger.gateway.cache import storable
from opsledger.gateway.jsonrpc import retriable
from opsledger.gateway.upstream import UpstreamFailure

if TYPE_CHECKING:
    from opsledger.gateway.proxy import ChainProxy, Planned

__all__ = ["answer_batch"]


async def answer_batch(proxy: ChainProxy, items: list[Any]) -> list[bytes | None]:
    """The answers to ``items`` in order (None for notifications)."""
    answers: list[bytes | None] = [None] * len(items)
    single: list[int] = []
    groups: dict[str, list[tuple[int, Planned]]] = defaultdict(list)
    for index, item in enumerate(items):
        planned = await proxy.plan(item)
        if planned is None:
            single.append(index)
        elif isinstance(planned, bytes):
            answers[index] = planned
        else:
            groups[planned.upstream.name].append((index, planned))
    sends = []
    for members in groups.values():
        if len(members) == 1:
            single.append(members[0][0])
        else:
            sends.append(_send_group(proxy, members, answers, single))
    await asyncio.gather(*sends)
    if single:
        replies = await asyncio.gather(*(proxy.handle_item(items[i]) for i in single))
        for index, reply in zip(single, replies, strict=True):
            answers[index] = reply
    return answers


async def _send_group(
    proxy: ChainProxy,
    members: list[tuple[int, Planned]],
    answers: list[bytes | None],
    single: list[int],
) -> None:
    upstream = members[0][1].upstream
    body = orjson.dumps(
        [
            {"jsonrpc": "2.0", "id": k, "method": p.request.method, "params": p.params}
            for k, (_, p) in enumerate(members)
        ]
    )
    started = time.perf_counter()
    deadline = time.monotonic() + proxy.limits.request_timeout_s
    try:
        data = await proxy.send(f"batch({len(members)})", upstream, body, deadline)
        replies = orjson.loads(data)
    except (UpstreamFailure, orjson.JSONDecodeError):
        single.extend(index for index, _ in members)
        return
    by_id = (
        {r.get("id"): r for r in replies if isinstance(r, dict)}
        if isinstance(replies, list)
        else {}
    )
    elapsed = time.perf_counter() - started
    for k, (index, planned) in enumerate(members):
        reply = by_id.get(k)
        method = planned.request.method
        if reply is None:
            single.append(index)
            continue
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            if retriable(error):
                single.append(index)
                continue
            answers[index] = orjson.dumps(
                {"jsonrpc": "2.0", "id": planned.request.id, "error": error}
            )
            proxy.count(method, "error", elapsed)
            continue
        value = reply.get("result")
        if value is None and proxy.null_is_suspect(method, planned.min_head, upstream):
            single.append(index)
            continue
        proxy.passive_head(upstream, method, value)
        raw = orjson.dumps(value)
        answers[index] = orjson.dumps(
            {"jsonrpc": "2.0", "id": planned.request.id, "result": orjson.Fragment(raw)}
        )
        proxy.count(method, "ok", elapsed)
        if planned.use_cache:
            final = storable(method, planned.decision, value, proxy.view.finalized)
            # Not after a reorg that happened while the batch was out (even a deep one).
            if (
                final.cacheable
                and planned.reorgs == proxy.view.reorgs
                and (not final.scoped or planned.generation == proxy.view.generation)
            ):
                await proxy.cache.set(planned.key, raw, final.block)
