"""Reads bound for one upstream in the same event-loop iteration go out as one batch.

Why: on the pure cache-miss path most of a request's cost is per upstream request, not
per read: a socket write and a read (each with its TCP work on loopback), the HTTP
response parsed callback by callback, a future and a timer, and on the node's side an
HTTP request to handle. Under load several misses become due in the same loop iteration
(one ``epoll`` wake-up delivers several clients' requests); sent as one JSON-RPC batch,
they share all of that. Nothing waits for a batch to fill: the batch is flushed at the
end of the iteration in which its first read was submitted (``call_soon``), so a lone
read leaves exactly as before, as a single request.

Each read keeps its own future and its own fate: an answer missing from the batch, or a
batch that failed, fails only as an ``UpstreamFailure`` for the reads in it, which the
proxy retries (on another upstream) and hedges one by one as before. An upstream that
answers a batch with anything but a list (a node or provider without batch support)
gets its reads one by one from then on, and the reads of that batch are re-sent singly.
``limits.upstream_batch`` bounds the batch (1 turns this off).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from opsledger.gateway.upstream import Upstream, UpstreamFailure

if TYPE_CHECKING:
    from opsledger.gateway.proxy import ChainProxy

__all__ = ["MissBatcher"]

# One queued read: method, params, its single-request body, its future, its deadline.
_Item = tuple[str, list[Any], bytes, "asyncio.Future[Any]", float]


class MissBatcher:
    """Batches the reads sent to one upstream within one event-loop iteration."""

    __slots__ = ("_queue", "enabled", "max_items", "proxy", "upstream")

    def __init__(self, proxy: ChainProxy, upstream: Upstream, max_items: int) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.max_items = max_items
        self.enabled = max_items > 1
        self._queue: list[_Item] = []

    def submit(
        self, method: str, params: list[Any], body: bytes, deadline: float
    ) -> asyncio.Future[Any]:
        """A future of the upstream's answer to this read: the raw reply (bytes) when it
        went alone, the decoded reply object when it went in a batch. The future is the
        caller's (a hedge may resolve it with another upstream's answer); the upstream
        request's own future feeds the breaker and the metrics."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.enabled:
            self._single((method, params, body, future, deadline))
            return future
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((method, params, body, future, deadline))
        if len(self._queue) >= self.max_items:
            self._flush()
        return future

    def _flush(self) -> None:
        items, self._queue = self._queue, []
        if not items:
            return
        if len(items) == 1:
            self._single(items[0])
            return
        body = orjson.dumps(
            [
                {"jsonrpc": "2.0", "id": k, "method": method, "params": params}
                for k, (method, params, _, _, _) in enumerate(items)
            ]
        )
        deadline = min(item[4] for item in items)
        try:
            sent = self.proxy.start(f"batch({len(items)})", self.upstream, body, deadline)
        except Exception as exc:  # never leave a read waiting on a batch that never left
            _fail(items, UpstreamFailure(f"request not sent: {exc}"))
            return
        sent.add_done_callback(lambda done: self._answered(items, done))

    def _single(self, item: _Item) -> None:
        method, _, body, future, deadline = item
        if future.done():
            return  # its caller gave up before it left
        try:
            sent = self.proxy.start(method, self.upstream, body, deadline)
        except Exception as exc:
            _fail([item], UpstreamFailure(f"request not sent: {exc}"))
            return
        sent.add_done_callback(lambda done: _relay(done, future))

    def _answered(self, items: list[_Item], done: asyncio.Future[bytes]) -> None:
        if done.cancelled():
            _fail(items, UpstreamFailure("batch cancelled"))
            return
        failure = done.exception()
        if failure is not None:
            _fail(items, failure)
            return
        try:
            replies = orjson.loads(done.result())
        except orjson.JSONDecodeError:
            self.upstream.failed()
            _fail(items, UpstreamFailure("upstream sent an invalid reply"))
            return
        if not isinstance(replies, list):
            # No batch support here: this upstream gets its reads one by one from now
            # on, and these go again, singly (nothing was answered).
            self.enabled = False
            remaining = [item for item in items if item[4] > time.monotonic()]
            _fail([i for i in items if i not in remaining], UpstreamFailure("timed out"))
            for item in remaining:
                self._single(item)
            return
        by_id = {reply.get("id"): reply for reply in replies if isinstance(reply, dict)}
        for k, (_, _, _, future, _) in enumerate(items):
            if future.done():
                continue
            reply = by_id.get(k)
            if reply is None:
                future.set_exception(UpstreamFailure("no answer for a batched read"))
            else:
                future.set_result(reply)


def _relay(done: asyncio.Future[bytes], future: asyncio.Future[Any]) -> None:
    if future.done():
        if not done.cancelled():
            done.exception()  # retrieved: nobody waits for it any more
        return
    if done.cancelled():
        future.set_exception(UpstreamFailure("request cancelled"))
        return
    failure = done.exception()
    if failure is not None:
        future.set_exception(failure)
    else:
        future.set_result(done.result())


def _fail(items: list[_Item], failure: BaseException) -> None:
    for _, _, _, future, _ in items:
        if not future.done():
            if isinstance(failure, UpstreamFailure):  # one instance each: tracebacks differ
                future.set_exception(UpstreamFailure(failure.reason, sent=failure.sent))
            else:
                future.set_exception(failure)
