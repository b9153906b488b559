"""Answering JSON-RPC for one chain: validation, safety, tags, cache, coalescing,
routing, retries, hedging and writes.

Reads are idempotent, so they are retried on another upstream on connection errors,
timeouts, 5xx and node errors that mean "this node is behind or broken", with a bounded
budget (``limits.max_retries`` and ``limits.request_timeout_s``), and hedged: a read
still unanswered after the upstream's p95 goes to a second upstream, first answer wins.
Writes are never blindly retried: only a request that provably never left (connection
refused) is tried elsewhere; ``broadcast_writes`` sends to every upstream at once and
returns the first success.

``latest``/``safe``/``finalized`` are resolved against the gateway's view and the
resolved number is sent upstream, so the request can only go to an upstream that has
that block and a block the gateway advertised is never answered ``null`` by a laggard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from opsledger.gateway.batch import answer_batch
from opsledger.gateway.cache import Cache, CacheDecision, cache_key, cache_policy, storable
from opsledger.gateway.coalesce import Coalescer
from opsledger.gateway.config import DEFAULT_DENIED, ChainConfig, LimitsConfig
from opsledger.gateway.health import ChainView, HealthMonitor
from opsledger.gateway.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    NO_UPSTREAM,
    Request,
    RpcErrorReply,
    error_response,
    parse_payload,
    retriable,
    validate,
)
from opsledger.gateway.methods import (
    BLOCK_PARAM,
    HASH_PINNED,
    TX_PINNED,
    Kind,
    classify,
    metric_label,
)
from opsledger.gateway.metrics import Metrics
from opsledger.gateway.router import Router
from opsledger.gateway.upstream import Upstream, UpstreamFailure
from opsledger.gateway.writes import sticky, write

__all__ = ["ChainProxy", "Planned"]


@dataclass(slots=True)
class Planned:
    """A plain read ready to go upstream as part of a batch (see ``batch``)."""

    request: Request
    params: list[Any]
    upstream: Upstream
    min_head: int | None
    decision: CacheDecision
    key: str
    generation: str
    use_cache: bool


class ChainProxy:
    """Everything needed to answer requests for one chain."""

    def __init__(
        self,
        chain: ChainConfig,
        limits: LimitsConfig,
        *,
        upstreams: Sequence[Upstream],
        monitor: HealthMonitor,
        cache: Cache,
        metrics: Metrics,
        method_costs: dict[str, float] | None = None,
    ) -> None:
        self.chain = chain
        self.limits = limits
        self.upstreams = list(upstreams)
        self.monitor = monitor
        self.view: ChainView = monitor.view
        self.router = Router(self.upstreams)
        self.cache = cache
        self.coalescer = Coalescer()
        self.metrics = metrics
        self.costs = method_costs
        self.upstream_calls = 0
        # Hedging budget: each read earns 0.1 token (at most 10 banked), a hedge spends
        # one, so hedges stay under ~10% of reads. Without it an overloaded machine,
        # where every request is "slower than p95", would double its own load.
        self._hedge_tokens = 10.0
        # True while heads are pushed to the view (the WebSocket hub is connected to an
        # upstream in rotation): the view is then as fresh as any node's answer.
        self.heads_pushed: Callable[[], bool] = lambda: False
        self._background: set[asyncio.Future[bytes]] = set()

    # ----------------------------------------------------------------- entry points

    async def handle_body(self, body: bytes) -> bytes | None:
        """Raw request body to raw response body (None: only notifications)."""
        try:
            payload = parse_payload(body)
        except RpcErrorReply as exc:
            return orjson.dumps({"jsonrpc": "2.0", "id": None, "error": exc.error})
        return await self.handle_payload(payload)

    async def handle_payload(self, payload: Any) -> bytes | None:
        if isinstance(payload, list):
            if not payload:
                return error_response(None, INVALID_REQUEST, "Invalid request: empty batch")
            if len(payload) > self.limits.max_batch:
                message = f"batch of {len(payload)} exceeds the limit of {self.limits.max_batch}"
                return error_response(None, LIMIT_EXCEEDED, message)
            # Split per upstream (one upstream batch each), answers keep their order.
            parts = await answer_batch(self, payload)
            answered = [p for p in parts if p is not None]
            return b"[" + b",".join(answered) + b"]" if answered else None
        return await self.handle_item(payload)

    async def handle_item(self, item: Any) -> bytes | None:
        started = time.perf_counter()
        request_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(request_id, (str, int, float)) or isinstance(request_id, bool):
            request_id = None  # an id we cannot echo is answered with null, per the spec
        method = "invalid"
        try:
            request = validate(item)
            method = request.method
            async with asyncio.timeout(self.limits.request_timeout_s):  # no extra task
                result = await self.call(request.method, request.params)
            outcome = "ok"
            reply = orjson.dumps(
                {"jsonrpc": "2.0", "id": request.id, "result": orjson.Fragment(result)}
            )
            notification = request.notification
        except RpcErrorReply as exc:
            outcome = "error"
            reply = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": exc.error})
            notification = isinstance(item, dict) and "id" not in item and method != "invalid"
        except TimeoutError:
            outcome = "timeout"
            limit = self.limits.request_timeout_s
            reply = error_response(request_id, INTERNAL_ERROR, f"request timed out after {limit}s")
            notification = False
        label = metric_label(method)
        self.metrics.child(self.metrics.requests, self.chain.name, label, outcome).inc()
        self.metrics.child(self.metrics.latency, self.chain.name, label).observe(
            time.perf_counter() - started
        )
        return None if notification else reply

    def count(self, method: str, outcome: str, seconds: float) -> None:
        label = metric_label(method)
        self.metrics.child(self.metrics.requests, self.chain.name, label, outcome).inc()
        self.metrics.child(self.metrics.latency, self.chain.name, label).observe(seconds)

    async def plan(self, item: Any) -> Planned | bytes | None:
        """For a batch item: the cached answer, a plain read to send upstream in a
        group, or None when the item takes the single path (anything but a plain read,
        a notification, an invalid request, no upstream)."""
        if not isinstance(item, dict) or "id" not in item:
            return None
        try:
            request = validate(item)
            info = classify(request.method, denied=DEFAULT_DENIED, allowed=self.chain.allow)
            if info.kind is not Kind.READ or request.method == "eth_blockNumber":
                return None
            params, min_head, archive = self._resolve(request.method, request.params)
        except RpcErrorReply:
            return None
        genesis = self.chain.genesis_hash or self.view.genesis or ""
        decision = cache_policy(request.method, params, self.view.finalized)
        generation = self.view.generation
        use_cache = decision.cacheable and genesis.startswith("0x")
        key = cache_key(genesis, request.method, params, generation if decision.scoped else None)
        if use_cache:
            cached = await self.cache.get(key)
            if cached is not None:
                self.metrics.child(self.metrics.cache, self.chain.name, "hit").inc()
                self.count(request.method, "ok", 0.0)
                return orjson.dumps(
                    {"jsonrpc": "2.0", "id": request.id, "result": orjson.Fragment(cached)}
                )
        upstream = self.router.choose(min_head=min_head, archive=archive, cost=info.cost)
        if upstream is None:
            return None
        if upstream.budget is not None:
            upstream.budget.take(info.cost)
        return Planned(request, params, upstream, min_head, decision, key, generation, use_cache)

    # ------------------------------------------------------------------- one call

    async def call(self, method: str, params: list[Any]) -> bytes:
        """The raw JSON ``result`` of ``method(params)``, or ``RpcErrorReply``."""
        info = classify(
            method,
            denied=DEFAULT_DENIED,
            allowed=self.chain.allow,
            costs=self.costs,
        )
        if info.kind is Kind.DENIED:
            raise RpcErrorReply(METHOD_NOT_FOUND, f"method {method} is not allowed by this gateway")
        if method in ("eth_subscribe", "eth_unsubscribe"):
            raise RpcErrorReply(METHOD_NOT_FOUND, f"{method} needs a WebSocket connection")
        if info.kind is Kind.WRITE:
            return await write(self, method, params, info.cost)
        if info.kind is Kind.STATEFUL:
            return await sticky(self, method, params)
        params, min_head, archive = self._resolve(method, params)
        genesis = self.chain.genesis_hash or self.view.genesis or f"unknown:{self.chain.name}"
        decision = cache_policy(method, params, self.view.finalized)
        if method == "eth_blockNumber":
            return await self._block_number(genesis, info.cost)
        generation = self.view.generation
        use_cache = decision.cacheable and genesis.startswith("0x")
        key = cache_key(genesis, method, params, generation if decision.scoped else None)
        if use_cache:
            cached = await self.cache.get(key)
            if cached is not None:
                self.metrics.child(self.metrics.cache, self.chain.name, "hit").inc()
                return cached
            self.metrics.child(self.metrics.cache, self.chain.name, "miss").inc()
        flight_key = key if decision.scoped or use_cache else f"{key}|{generation}"
        result, shared = await self.coalescer.run(
            flight_key, lambda: self._read(method, params, min_head, archive, info.cost)
        )
        if shared:
            self.metrics.child(self.metrics.coalesced, self.chain.name).inc()
        raw, value = result
        if use_cache and not shared:
            final = storable(method, decision, value, self.view.finalized)
            if final.cacheable and (not final.scoped or generation == self.view.generation):
                await self.cache.set(key, raw, final.block)
        return raw

    async def _block_number(self, genesis: str, cost: float) -> bytes:
        """Never lower than a head the gateway already advertised (heads never go back)."""
        if self.view.head >= 0 and self.heads_pushed():
            return orjson.dumps(hex(self.view.head))
        (raw, value), _ = await self.coalescer.run(
            f"{genesis}|eth_blockNumber",
            lambda: self._read("eth_blockNumber", [], None, False, cost),
        )
        number = int(value, 16) if isinstance(value, str) and value.startswith("0x") else -1
        if number > self.view.head:
            # A passive head signal from an in-rotation upstream: the view moves on.
            self.view.advance(number)
            return raw
        if self.view.head >= 0:
            return orjson.dumps(hex(self.view.head))
        return raw

    # --------------------------------------------------------------- tag resolution

    def _tag(self, value: Any) -> Any:
        head = self.view.head
        if head < 0:
            return value
        if value in (None, "latest"):
            return hex(head)
        if value in ("safe", "finalized"):
            return hex(max(0, self.view.finalized))
        if value == "earliest":
            return "0x0"
        return value

    def _resolve(self, method: str, params: list[Any]) -> tuple[list[Any], int | None, bool]:
        """Params with tags resolved, the head the upstream needs, archive or not."""
        index = BLOCK_PARAM.get(method)
        head = self.view.head
        min_head: int | None = None
        lowest: int | None = None
        if index is not None:
            params = list(params)
            if len(params) == index and head >= 0 and method not in ("eth_feeHistory",):
                params.append("latest")
            if len(params) > index:
                params[index] = self._tag(params[index])
                number = _number(params[index])
                min_head = lowest = number
        elif method == "eth_getLogs" and params and isinstance(params[0], dict):
            flt = dict(params[0])
            if "blockHash" not in flt:
                flt["fromBlock"] = self._tag(flt.get("fromBlock"))
                flt["toBlock"] = self._tag(flt.get("toBlock"))
                start, end = _number(flt["fromBlock"]), _number(flt["toBlock"])
                if start is not None and end is not None:
                    if end - start + 1 > self.limits.max_logs_range:
                        raise RpcErrorReply(
                            LIMIT_EXCEEDED,
                            f"eth_getLogs range of {end - start + 1} blocks exceeds the limit "
                            f"of {self.limits.max_logs_range}",
                        )
                    min_head, lowest = end, start
            params = [flt, *params[1:]]
        archive = method.startswith("debug_trace") or (
            lowest is not None and head >= 0 and lowest < head - self.chain.archive_depth
        )
        return params, min_head, archive

    # ------------------------------------------------------------------- reads

    async def _read(
        self,
        method: str,
        params: list[Any],
        min_head: int | None,
        archive: bool,
        cost: float,
    ) -> tuple[bytes, Any]:
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        deadline = time.monotonic() + self.limits.request_timeout_s
        tried: set[str] = set()
        last_error: dict[str, Any] | None = None
        saw_null = False
        attempts = 1 + self.limits.max_retries
        for attempt in range(attempts):
            upstream = await self._choose(min_head, archive, tried, cost, deadline)
            if upstream is None:
                break
            if attempt:
                self.metrics.child(
                    self.metrics.retries, self.chain.name, metric_label(method)
                ).inc()
            try:
                winner, data = await self._hedged(
                    method=method,
                    first=upstream,
                    body=body,
                    min_head=min_head,
                    archive=archive,
                    tried=tried,
                    cost=cost,
                    deadline=deadline,
                )
            except UpstreamFailure as exc:
                last_error = {"code": NO_UPSTREAM, "message": f"upstream failed: {exc.reason}"}
                continue
            reply = _decode(data)
            if reply is None:
                winner.failed()
                last_error = {"code": INTERNAL_ERROR, "message": "upstream sent an invalid reply"}
                continue
            if "error" in reply:
                error = reply["error"] if isinstance(reply["error"], dict) else {}
                if retriable(error):
                    last_error = error
                    continue
                raise RpcErrorReply(
                    int(error.get("code", INTERNAL_ERROR)),
                    str(error.get("message", "upstream error")),
                    error.get("data"),
                )
            value = reply.get("result")
            if value is None and self.null_is_suspect(method, min_head, winner):
                saw_null, last_error = True, None
                continue
            self.passive_head(winner, method, value)
            return _raw_result(data, value), value
        if last_error is None and saw_null:
            return b"null", None  # every upstream asked says null: it is null
        if last_error is None:
            raise RpcErrorReply(NO_UPSTREAM, f"no healthy upstream for chain {self.chain.name}")
        raise RpcErrorReply(
            int(last_error.get("code", INTERNAL_ERROR)), str(last_error.get("message", ""))
        )

    def passive_head(self, upstream: Upstream, method: str, value: Any) -> None:
        """Heads revealed by real traffic (a receipt in a new block, a fresher block
        number) move the upstream and, from an in-rotation upstream, the view: a client
        that just saw block N in a receipt must see ``latest`` >= N next."""
        number: int | None = None
        if method == "eth_blockNumber":
            number = _number(value)
        elif isinstance(value, dict):
            number = _number(value.get("blockNumber") or value.get("number"))
        if number is None or number <= upstream.head:
            return
        upstream.note_head(number)
        if upstream.in_rotation and number > self.view.head:
            self.view.advance(number)

    def null_is_suspect(self, method: str, min_head: int | None, upstream: Upstream) -> bool:
        """A null for a block the gateway advertised (or a hash another node may know)."""
        if min_head is not None:
            return min_head <= self.view.head and method in _BLOCK_RESULTS
        if method in HASH_PINNED or method in TX_PINNED:
            return any(u.head > upstream.head and u.in_rotation for u in self.upstreams)
        return False

    async def _choose(
        self,
        min_head: int | None,
        archive: bool,
        tried: set[str],
        cost: float,
        deadline: float,
    ) -> Upstream | None:
        choose = self.router.choose
        upstream = choose(min_head=min_head, archive=archive, exclude=tried, cost=cost)
        if upstream is None and min_head is not None:
            if min_head <= self.view.head:
                # The gateway advertised this block but nobody in rotation has it right
                # now (the leader died): wait, bounded, for another to catch up.
                wait = min(1.0, max(0.0, deadline - time.monotonic()))
                if wait > 0 and await self.monitor.wait_for_head(min_head, wait):
                    upstream = choose(min_head=min_head, archive=archive, exclude=tried, cost=cost)
            elif not tried:
                # Above every known head: the highest node answers (null, as it should).
                pool = self.router.candidates(archive=archive, exclude=tried, cost=cost)
                upstream = max(pool, key=lambda u: u.head, default=None)
        if upstream is not None:
            tried.add(upstream.name)
            if upstream.budget is not None:
                upstream.budget.take(cost)
        return upstream

    async def send(self, method: str, upstream: Upstream, body: bytes, deadline: float) -> bytes:
        timeout = max(0.001, min(upstream.config.timeout_s, deadline - time.monotonic()))
        started = time.perf_counter()
        self.upstream_calls += 1
        try:
            data = await upstream.post(body, timeout)
        except UpstreamFailure:
            upstream.failed()
            self.metrics.child(
                self.metrics.upstream_requests,
                self.chain.name,
                upstream.name,
                metric_label(method),
                "failure",
            ).inc()
            raise
        upstream.succeeded()
        self.metrics.child(
            self.metrics.upstream_requests,
            self.chain.name,
            upstream.name,
            metric_label(method),
            "ok",
        ).inc()
        self.metrics.child(self.metrics.upstream_latency, self.chain.name, upstream.name).observe(
            time.perf_counter() - started
        )
        return data

    async def _hedged(
        self,
        *,
        method: str,
        first: Upstream,
        body: bytes,
        min_head: int | None,
        archive: bool,
        tried: set[str],
        cost: float,
        deadline: float,
    ) -> tuple[Upstream, bytes]:
        """Send to ``first``; if it has not answered after its p95, also to a second."""
        started = time.monotonic()
        primary: asyncio.Future[bytes] = asyncio.ensure_future(
            self.send(method, first, body, deadline)
        )
        self._hedge_tokens = min(10.0, self._hedge_tokens + 0.1)
        if not self.limits.hedge or self._hedge_tokens < 1.0:
            return first, await primary
        delay = max(self.limits.hedge_min_ms, first.p95_ms()) / 1000
        done, _ = await asyncio.wait({primary}, timeout=delay)
        if done:
            return first, primary.result()
        second = self.router.choose(min_head=min_head, archive=archive, exclude=tried, cost=cost)
        if second is None:
            return first, await primary
        tried.add(second.name)
        self._hedge_tokens -= 1.0
        if second.budget is not None:
            second.budget.take(cost)
        backup: asyncio.Future[bytes] = asyncio.ensure_future(
            self.send(method, second, body, deadline)
        )
        racers = {primary: first, backup: second}
        pending: set[asyncio.Future[bytes]] = set(racers)
        failure: UpstreamFailure | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        winner = racers[task]
                        self.metrics.child(
                            self.metrics.hedges,
                            self.chain.name,
                            metric_label(method),
                            "hedge" if task is backup else "primary",
                        ).inc()
                        if task is backup:
                            # The primary lost the race: its latency is at least this much.
                            first.observe((time.monotonic() - started) * 1000)
                        return winner, task.result()
                    if isinstance(exc, UpstreamFailure):
                        failure = exc
                    else:
                        raise exc
        finally:
            # The loser is not cancelled: cancelling drops its pooled connection (a new
            # TCP connection per hedge), and its outcome still feeds the breaker.
            self.keep(pending)
        raise failure or UpstreamFailure("both hedged requests failed")

    def keep(self, tasks: set[asyncio.Future[bytes]]) -> None:
        """Let ``tasks`` finish in the background, referenced and their errors retrieved."""
        for task in tasks:
            self._background.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[bytes]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a losing failure is not an unhandled error


_BLOCK_RESULTS = frozenset(
    {
        "eth_getBlockByNumber",
        "eth_getBlockTransactionCountByNumber",
        "eth_getBlockReceipts",
        "eth_getTransactionByBlockNumberAndIndex",
        "eth_getUncleCountByBlockNumber",
    }
)


def _number(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return reply if isinstance(reply, dict) else None


def _raw_result(data: bytes, value: Any) -> bytes:
    return orjson.dumps(value)
