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
from collections.abc import Callable, Coroutine, Sequence
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
    MethodInfo,
    classify,
    metric_label,
)
from opsledger.gateway.metrics import Metrics
from opsledger.gateway.microbatch import MissBatcher
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
    reorgs: int  # the view's reorg count when planned: a reorg since means "do not cache"


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
        self._methods: dict[str, MethodInfo] = {}
        self._counted: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._batchers: dict[str, MissBatcher] = {}
        # The in-process cache answers without awaiting: such hits need no task at all.
        self._peek: Callable[[str], bytes | None] | None = getattr(cache, "get_now", None)

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

    def respond(self, payload: Any) -> bytes | Coroutine[Any, Any, bytes | None] | None:
        """``handle_payload``, answered without a coroutine when nothing needs awaiting:
        a single read answered from the in-process cache or from the pushed head view
        (the HTTP server then writes the answer without creating a task). A single
        plain read that must go upstream returns a coroutine that starts from what was
        already worked out (validation, tags, cache key)."""
        if self._peek is not None and type(payload) is dict:
            answered = self._answer_now(payload)
            if answered is not _PENDING:
                return answered  # type: ignore[no-any-return]
        return self.handle_payload(payload)

    def _answer_now(self, item: dict[str, Any]) -> Any:
        """A single request's answer, a coroutine for a plain read that must go
        upstream, or ``_PENDING`` (anything else: the general path answers it)."""
        started = time.perf_counter()
        try:
            request = validate(item)
            method = request.method
            info = self._info(method)
            if info.kind is not Kind.READ or method in _SOCKET_ONLY:
                return _PENDING
            view = self.view
            if method == "eth_blockNumber":
                if view.head < 0 or not self.heads_pushed():
                    return _PENDING
                result = b'"0x%x"' % view.head
            else:
                params, min_head, archive = self._resolve(method, request.params)
                genesis = self.chain.genesis_hash or view.genesis or ""
                decision = cache_policy(method, params, view.finalized)
                use_cache = decision.cacheable and genesis.startswith("0x")
                generation = view.generation
                key = cache_key(genesis, method, params, generation if decision.scoped else None)
                cached = self._peek(key) if use_cache and self._peek is not None else None
                if cached is None:
                    if use_cache:
                        self.metrics.child(self.metrics.cache, self.chain.name, "miss").inc()
                    fetch = self._fetch(
                        method=method,
                        params=params,
                        min_head=min_head,
                        archive=archive,
                        cost=info.cost,
                        decision=decision,
                        key=key,
                        generation=generation,
                        use_cache=use_cache,
                    )
                    # Every wait on this path is bounded by the read's own deadline
                    # (``_read``): no second timeout around it.
                    return self._complete(request, started, fetch, bounded=False)
                self.metrics.child(self.metrics.cache, self.chain.name, "hit").inc()
                result = cached
        except RpcErrorReply:
            return _PENDING
        self.count(method, "ok", time.perf_counter() - started)
        if request.notification:
            return None
        return orjson.dumps({"jsonrpc": "2.0", "id": request.id, "result": orjson.Fragment(result)})

    async def handle_item(self, item: Any) -> bytes | None:
        started = time.perf_counter()
        try:
            request = validate(item)
        except RpcErrorReply as exc:
            request_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(request_id, (str, int, float)) or isinstance(request_id, bool):
                request_id = None  # an id we cannot echo is answered with null, per the spec
            self.count("invalid", "error", time.perf_counter() - started)
            return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": exc.error})
        return await self._complete(request, started, self.call(request.method, request.params))

    async def _complete(
        self,
        request: Request,
        started: float,
        work: Coroutine[Any, Any, bytes],
        *,
        bounded: bool = True,
    ) -> bytes | None:
        """Await ``work`` (the raw result) and frame the answer; counts the request."""
        try:
            if bounded:
                async with asyncio.timeout(self.limits.request_timeout_s):  # no extra task
                    result = await work
            else:
                result = await work
            outcome = "ok"
            reply = orjson.dumps(
                {"jsonrpc": "2.0", "id": request.id, "result": orjson.Fragment(result)}
            )
            notification = request.notification
        except RpcErrorReply as exc:
            outcome = "error"
            reply = orjson.dumps({"jsonrpc": "2.0", "id": request.id, "error": exc.error})
            notification = request.notification
        except TimeoutError:
            outcome = "timeout"
            limit = self.limits.request_timeout_s
            reply = error_response(request.id, INTERNAL_ERROR, f"request timed out after {limit}s")
            notification = False
        self.count(request.method, outcome, time.perf_counter() - started)
        return None if notification else reply

    def count(self, method: str, outcome: str, seconds: float) -> None:
        """One answered request in the metrics (its counter and latency children are
        looked up once per method and outcome)."""
        children = self._counted.get((method, outcome))
        if children is None:
            label = metric_label(method)
            metrics, chain = self.metrics, self.chain.name
            children = (
                metrics.child(metrics.requests, chain, label, outcome),
                metrics.child(metrics.latency, chain, label),
            )
            if len(self._counted) < 4096:  # bounded: clients choose the method names
                self._counted[(method, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)

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
        return Planned(
            request,
            params,
            upstream,
            min_head,
            decision,
            key,
            generation,
            use_cache,
            self.view.reorgs,
        )

    # ------------------------------------------------------------------- one call

    def _info(self, method: str) -> MethodInfo:
        """``classify``, memoised per method name (bounded: clients choose the names)."""
        info = self._methods.get(method)
        if info is None:
            info = classify(
                method, denied=DEFAULT_DENIED, allowed=self.chain.allow, costs=self.costs
            )
            if len(self._methods) < 1024:
                self._methods[method] = info
        return info

    async def call(self, method: str, params: list[Any]) -> bytes:
        """The raw JSON ``result`` of ``method(params)``, or ``RpcErrorReply``."""
        info = self._info(method)
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
        return await self._fetch(
            method=method,
            params=params,
            min_head=min_head,
            archive=archive,
            cost=info.cost,
            decision=decision,
            key=key,
            generation=generation,
            use_cache=use_cache,
        )

    async def _fetch(
        self,
        *,
        method: str,
        params: list[Any],
        min_head: int | None,
        archive: bool,
        cost: float,
        decision: CacheDecision,
        key: str,
        generation: str,
        use_cache: bool,
    ) -> bytes:
        """A cache miss: one coalesced upstream read, stored when ``storable``."""
        reorgs = self.view.reorgs
        flight_key = key if decision.scoped or use_cache else f"{key}|{generation}"
        result, shared = await self.coalescer.run(
            flight_key, lambda: self._read(method, params, min_head, archive, cost)
        )
        if shared:
            self.metrics.child(self.metrics.coalesced, self.chain.name).inc()
        raw, value = result
        if use_cache and not shared:
            view = self.view
            final = storable(method, decision, value, view.finalized)
            # A reorg while the read was in flight (even one deeper than finality, which
            # drops "final" entries too) means the answer may be from the old branch:
            # answer it, but do not cache it.
            if (
                final.cacheable
                and reorgs == view.reorgs
                and (not final.scoped or generation == view.generation)
            ):
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
            if attempt and time.monotonic() >= deadline:
                # The read's own deadline is its only timeout on the single-read path.
                raise TimeoutError
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
                    send=lambda chosen: self._submit(chosen, method, params, body, deadline),
                    min_head=min_head,
                    archive=archive,
                    tried=tried,
                    cost=cost,
                )
            except UpstreamFailure as exc:
                last_error = {"code": NO_UPSTREAM, "message": f"upstream failed: {exc.reason}"}
                continue
            reply = data if type(data) is dict else _decode(data)
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
            return orjson.dumps(value), value
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
        """One upstream request (bounded by ``deadline`` and the upstream's timeout)."""
        return await self.start(method, upstream, body, deadline)

    def start(
        self, method: str, upstream: Upstream, body: bytes, deadline: float
    ) -> asyncio.Future[bytes]:
        """``send`` as a future: written now, no task when the upstream has an idle
        connection; the breaker and the metrics are fed when it settles."""
        timeout = max(0.001, min(upstream.config.timeout_s, deadline - time.monotonic()))
        self.upstream_calls += 1
        started = time.perf_counter()
        future = upstream.start(body, timeout)
        future.add_done_callback(lambda done: self._sent(method, upstream, started, done))
        return future

    def _sent(
        self, method: str, upstream: Upstream, started: float, done: asyncio.Future[bytes]
    ) -> None:
        if done.cancelled():
            return
        failure = done.exception()
        if failure is not None and not isinstance(failure, UpstreamFailure):
            return  # a bug, not the upstream's fault: the awaiting caller sees it
        metrics, chain = self.metrics, self.chain.name
        label = metric_label(method)
        if failure is not None:
            upstream.failed()
            metrics.child(metrics.upstream_requests, chain, upstream.name, label, "failure").inc()
            return
        upstream.succeeded()
        metrics.child(metrics.upstream_requests, chain, upstream.name, label, "ok").inc()
        metrics.child(metrics.upstream_latency, chain, upstream.name).observe(
            time.perf_counter() - started
        )

    def _submit(
        self, upstream: Upstream, method: str, params: list[Any], body: bytes, deadline: float
    ) -> asyncio.Future[Any]:
        """One read to ``upstream``, batched with the others due in this loop iteration
        (``microbatch``): a future of its raw reply or decoded reply object."""
        batcher = self._batchers.get(upstream.name)
        if batcher is None:
            batcher = MissBatcher(self, upstream, self.limits.upstream_batch)
            self._batchers[upstream.name] = batcher
        return batcher.submit(method, params, body, deadline)

    async def _hedged(
        self,
        *,
        method: str,
        first: Upstream,
        send: Callable[[Upstream], asyncio.Future[Any]],
        min_head: int | None,
        archive: bool,
        tried: set[str],
        cost: float,
    ) -> tuple[Upstream, Any]:
        """Send to ``first``; if it has not answered after its p95, also to a second."""
        primary = send(first)
        self._hedge_tokens = min(10.0, self._hedge_tokens + 0.1)
        if not self.limits.hedge or self._hedge_tokens < 1.0 or primary.done():
            return first, await primary
        delay = max(self.limits.hedge_min_ms, first.p95_ms()) / 1000
        hedge = _Hedge(
            self,
            method=method,
            first=first,
            primary=primary,
            send=send,
            route=(min_head, archive, tried, cost),
        )
        timer = asyncio.get_running_loop().call_later(delay, hedge.fire)
        try:
            data = await primary
        except UpstreamFailure:
            if hedge.backup is None or hedge.second is None:
                raise  # failed before the hedge delay: the caller retries elsewhere
            data = await hedge.backup  # the hedge may still answer (else its failure)
            hedge.winner = hedge.second
        finally:
            timer.cancel()
        if hedge.backup is not None:
            won = "hedge" if hedge.winner is not first else "primary"
            self.metrics.child(
                self.metrics.hedges, self.chain.name, metric_label(method), won
            ).inc()
        return hedge.winner, data

    def keep(self, tasks: set[asyncio.Future[bytes]]) -> None:
        """Let ``tasks`` finish in the background, referenced and their errors retrieved."""
        for task in tasks:
            self._background.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[bytes]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a losing failure is not an unhandled error


class _Hedge:
    """A read's hedge: once the primary has been out for its upstream's p95, ``fire``
    (a timer callback) sends the read to a second upstream; a good answer from that one
    resolves the primary's future, so the caller, awaiting the primary, gets whichever
    answer came first.

    Why this shape: a task per upstream request plus ``asyncio.wait`` were the largest
    items of the miss path once the HTTP server was lean; here the usual case, an
    answer before the delay, costs one timer and this object (measured,
    ``docs/gateway-benchmark.md``). The loser is not cancelled: cancelling drops its
    pooled connection (a new TCP connection per hedge), and its outcome still feeds the
    breaker; its failure is retrieved here, never reported as unhandled.
    """

    __slots__ = (
        "backup",
        "first",
        "method",
        "primary",
        "proxy",
        "route",
        "second",
        "send",
        "started",
        "winner",
    )

    def __init__(
        self,
        proxy: ChainProxy,
        *,
        method: str,
        first: Upstream,
        primary: asyncio.Future[Any],
        send: Callable[[Upstream], asyncio.Future[Any]],
        route: tuple[int | None, bool, set[str], float],
    ) -> None:
        self.proxy = proxy
        self.method = method
        self.first = first
        self.primary = primary
        self.send = send
        self.route = route
        self.started = time.monotonic()
        self.second: Upstream | None = None
        self.backup: asyncio.Future[Any] | None = None
        self.winner = first

    def fire(self) -> None:
        if self.primary.done():
            return
        proxy = self.proxy
        min_head, archive, tried, cost = self.route
        second = proxy.router.choose(min_head=min_head, archive=archive, exclude=tried, cost=cost)
        if second is None:
            return  # nobody else can serve it: the primary's answer decides
        tried.add(second.name)
        proxy._hedge_tokens -= 1.0
        if second.budget is not None:
            second.budget.take(cost)
        self.second = second
        self.backup = self.send(second)
        self.backup.add_done_callback(self._answered)

    def _answered(self, backup: asyncio.Future[Any]) -> None:
        if backup.cancelled() or backup.exception() is not None:
            return  # retrieved; the primary may still answer
        if not self.primary.done() and self.second is not None:
            self.winner = self.second
            # The primary lost the race: its latency is at least this much.
            self.first.observe((time.monotonic() - self.started) * 1000)
            self.primary.set_result(backup.result())


_PENDING = object()  # ``_answer_now``: the general path answers this one
_SOCKET_ONLY = frozenset({"eth_subscribe", "eth_unsubscribe"})

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
