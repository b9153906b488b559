"""WebSocket ``eth_subscribe`` for gateway clients, multiplexed onto one upstream socket.

Why a hub: a node charges (and a provider bills) per subscription and per socket, and a
dApp fleet opens thousands of identical ``newHeads`` and ``logs`` subscriptions. The hub
keeps ONE upstream WebSocket per chain and ONE upstream subscription per distinct
``(kind, normalised filter)``; every client subscription is a local id mapped onto it.

Invariants:

* A client's subscription id never changes while its socket is open. When the upstream
  socket drops (crash, restart, ping timeout on a hung node) the hub reconnects to the
  next URL in ``ws_urls`` (cycling, so with one URL it is the same node), resubscribes
  every live ``(kind, filter)`` and keeps delivering under the same client ids.
* ``newHeads`` never go backwards for clients: a head below the last delivered number is
  dropped (a lagging upstream after failover); a head at the same number with another
  hash is delivered (a reorg). After a reconnect, a gap up to ``backfill_limit`` blocks is
  filled from ``eth_getBlockByNumber`` so subscribers see every height once.
* ``on_new_head`` sees exactly the heads clients see, in order, even with no client
  subscribed (the hub then holds its own ``newHeads`` subscription), so the gateway core
  can follow the head and detect reorgs from parent hashes.
* Every other JSON-RPC call on a client socket goes through ``rpc_handler`` (the gateway's
  normal HTTP path: routing, cache, limits) when given, else to the current upstream.

The JSON-RPC framing and the fan-out are small enough to write here; the WebSocket
protocol itself is the ``websockets`` library (upstream side) and the web server's
WebSocket object (client side: Starlette, aiohttp or ``websockets``, see ``serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

__all__ = ["SubscriptionHub", "subscription_key"]

log = logging.getLogger(__name__)

JSON = dict[str, Any]
RpcHandler = Callable[[bytes], Awaitable[bytes]]
HeadCallback = Callable[[JSON], object]

KINDS = frozenset({"newHeads", "logs", "newPendingTransactions"})
_HEADER_ONLY_DROP = ("transactions", "uncles", "withdrawals", "size", "totalDifficulty")


# Rate limits for one client socket: the decoded message (one call or a batch) in, None
# when it may be answered, else the JSON-RPC error to answer instead.
Admit = Callable[[Any], Awaitable["dict[str, Any] | None"]]


class _ClientSocket(Protocol):
    async def receive(self) -> str | bytes | None: ...
    async def send(self, text: str) -> None: ...
    async def close(self) -> None: ...


class UpstreamUnavailable(ConnectionError):
    """No upstream socket is connected (the hub is reconnecting)."""


class RpcError(Exception):
    """A JSON-RPC error to hand back to the client as is."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_dict(self) -> JSON:
        error: JSON = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _lower_sorted(value: object, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise RpcError(-32602, f"logs filter: {what} must be a hex string or a list of them")
    return sorted({i.lower() for i in items})


def subscription_key(kind: str, params: Sequence[Any]) -> tuple[str, str, list[Any]]:
    """``(kind, canonical filter text, upstream params)`` for an ``eth_subscribe`` call.

    Two filters that select the same logs (address as a string or a one-element list,
    hex case, order inside a topic's OR list, trailing ``null`` topics) share a key, so
    they share one upstream subscription.
    """
    if kind not in KINDS:
        raise RpcError(-32602, f"unsupported subscription {kind!r}: use newHeads or logs")
    if kind != "logs":
        if params:
            raise RpcError(-32602, f"{kind} takes no filter")
        return kind, "", [kind]
    raw = params[0] if params else {}
    if len(params) > 1 or not isinstance(raw, dict):
        raise RpcError(-32602, "logs takes one filter object {address, topics}")
    unknown = set(raw) - {"address", "topics"}
    if unknown:
        raise RpcError(-32602, f"logs filter: unsupported keys {sorted(unknown)}")
    normal: JSON = {}
    if raw.get("address") is not None:
        normal["address"] = _lower_sorted(raw["address"], "address")
    topics = raw.get("topics")
    if topics is not None:
        if not isinstance(topics, list) or len(topics) > 4:
            raise RpcError(-32602, "logs filter: topics must be a list of at most 4")
        slots: list[Any] = [
            None if t is None else _lower_sorted(t, f"topics[{i}]") for i, t in enumerate(topics)
        ]
        while slots and slots[-1] is None:
            slots.pop()
        if slots:
            normal["topics"] = slots
    text = orjson.dumps(normal, option=orjson.OPT_SORT_KEYS).decode()
    return kind, text, [kind, normal] if normal else [kind]


@dataclass(eq=False)
class _Client:
    """One client socket: its outbound queue and the subscriptions it holds."""

    socket: _ClientSocket
    outbox: asyncio.Queue[str | None]
    subs: dict[str, _UpstreamSub] = field(default_factory=dict)
    admit: Admit | None = None


@dataclass(eq=False)
class _UpstreamSub:
    """One ``(kind, filter)``: the upstream id (``None`` while unsubscribed) and clients."""

    kind: str
    key: str
    params: list[Any]
    upstream_id: str | None = None
    clients: dict[str, _Client] = field(default_factory=dict)
    internal: bool = False
    last_number: int | None = None
    last_hash: str | None = None
    resumed: bool = False
    inflight: asyncio.Task[None] | None = None
    # logs: the highest block a delivered log came from (or the head when subscribed),
    # the keys of recent logs (a backfill overlaps live notifications), and the live
    # notifications held back while a backfill runs, so clients get them in order.
    log_block: int | None = None
    recent: deque[tuple[object, ...]] = field(default_factory=lambda: deque(maxlen=1024))
    held: list[JSON] | None = None


class SubscriptionHub:
    """Client subscriptions for one chain over one reconnecting upstream WebSocket.

    ``rpc_handler(payload) -> reply`` answers non-subscription calls (pass the gateway's
    proxy, bound to this chain); without it they go to the current upstream socket.
    """

    def __init__(
        self,
        chain: str,
        ws_urls: Sequence[str],
        *,
        on_new_head: HeadCallback | None = None,
        rpc_handler: RpcHandler | None = None,
        request_timeout: float = 10.0,
        ping_interval: float = 2.0,
        ping_timeout: float = 3.0,
        backoff_max: float = 2.0,
        backfill_limit: int = 32,
        client_queue: int = 1024,
        max_client_subscriptions: int = 256,
        max_batch: int = 100,
    ) -> None:
        self.max_batch = max_batch  # the HTTP path's limit holds on the socket too
        if not ws_urls:
            raise ValueError(f"chain {chain}: no WebSocket upstream URL")
        self.chain = chain
        self.ws_urls = list(ws_urls)
        self.on_new_head = on_new_head
        self.rpc_handler = rpc_handler
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_max = backoff_max
        self.backfill_limit = backfill_limit
        self.client_queue = client_queue
        self.max_client_subscriptions = max_client_subscriptions
        self.current_url: str | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("connects", "disconnects", "notifications_in", "notifications_out", "dropped"), 0
        )
        self._subs: dict[tuple[str, str], _UpstreamSub] = {}
        self._by_upstream: dict[str, _UpstreamSub] = {}
        self._clients: set[_Client] = set()
        self._pending: dict[int, tuple[asyncio.Future[JSON], Callable[[JSON], None] | None]] = {}
        self._ids = itertools.count(1)
        self._conn: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._heads: asyncio.Queue[tuple[_UpstreamSub, JSON]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; returns at once (clients wait for the connection)."""
        if self.on_new_head is not None:
            kind, key, params = subscription_key("newHeads", [])
            self._subs[(kind, key)] = _UpstreamSub(kind, key, params, internal=True)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"ws-hub-{self.chain}"),
            asyncio.create_task(self._head_worker(), name=f"ws-heads-{self.chain}"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for client in list(self._clients):
            client.outbox.put_nowait(None)
        if self._conn is not None:
            await self._conn.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    def stats(self) -> dict[str, int]:
        """Counters and gauges for the gateway's metrics."""
        return {
            **self.counters,
            "clients": len(self._clients),
            "client_subscriptions": sum(len(s.clients) for s in self._subs.values()),
            "upstream_subscriptions": sum(1 for s in self._subs.values() if s.upstream_id),
            "connected": int(self._connected.is_set()),
        }

    # -- upstream connection --------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        index = 0
        while not self._stopping:
            url = self.ws_urls[index % len(self.ws_urls)]
            try:
                conn = await connect(
                    url,
                    open_timeout=self.request_timeout,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    close_timeout=1.0,  # a hung node never answers the close handshake
                    max_size=64 * 2**20,
                    compression=None,
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                log.info("chain %s: upstream %s unreachable: %s", self.chain, url, exc)
                index += 1
                failures += 1
                if failures >= len(self.ws_urls):
                    await asyncio.sleep(min(self.backoff_max, 0.05 * 2 ** (failures - 1)))
                continue
            failures = 0
            await self._session(conn, url)
            index += 1  # the node that dropped us is the least likely to be healthy now

    async def _session(self, conn: ClientConnection, url: str) -> None:
        self._conn = conn
        self.current_url = url
        self.counters["connects"] += 1
        reader = asyncio.create_task(self._read(conn))
        for sub in self._subs.values():
            if sub.kind == "logs" and sub.log_block is not None:
                sub.held = []
        try:
            await self._resubscribe()
            self._connected.set()
            await self._catch_up()
            await reader
        except (ConnectionError, ConnectionClosed, TimeoutError) as exc:
            log.info("chain %s: upstream %s lost during resubscribe: %s", self.chain, url, exc)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._connected.clear()
            self._conn = None
            self.counters["disconnects"] += 1
            for future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(UpstreamUnavailable(f"upstream {url} closed"))
            self._pending.clear()
            self._by_upstream.clear()
            for sub in self._subs.values():
                sub.upstream_id = None
                sub.resumed = True
                sub.held = None  # the next session backfills from ``log_block`` again
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)

    async def _resubscribe(self) -> None:
        for sub in list(self._subs.values()):
            if sub.upstream_id is None and (sub.clients or sub.internal):
                try:
                    await self._ensure_upstream(sub)
                except RpcError as exc:
                    log.warning("chain %s: resubscribe %s refused: %s", self.chain, sub.key, exc)

    async def _catch_up(self) -> None:
        """Fill what was missed while no socket was attached. Heads would only be
        backfilled at the next notification (minutes on a quiet chain), so ask for the head
        now; logs are fetched with ``eth_getLogs`` from the last block a log came from."""
        waiting = [
            s for s in self._subs.values() if s.kind == "newHeads" and s.last_number is not None
        ]
        if waiting:
            head = await self._fetch_header_tag("latest")
            if head is not None:
                for sub in waiting:
                    self._heads.put_nowait((sub, head))
        for sub in list(self._subs.values()):
            if sub.kind == "logs" and sub.held is not None:
                await self._backfill_logs(sub)

    async def _backfill_logs(self, sub: _UpstreamSub) -> None:
        start = sub.log_block
        log_filter = dict(sub.params[1]) if len(sub.params) > 1 else {}
        missed: list[Any] = []
        if start is not None:
            log_filter |= {"fromBlock": hex(start), "toBlock": "latest"}
            reply = await self._call("eth_getLogs", [log_filter])
            if isinstance(reply.get("result"), list):
                missed = reply["result"]
            else:
                log.warning("chain %s: logs backfill refused: %s", self.chain, reply.get("error"))
        held, sub.held = sub.held or [], None
        for item in [*missed, *held]:
            if isinstance(item, dict):
                self._deliver_log(sub, item)

    def _deliver_log(self, sub: _UpstreamSub, item: JSON) -> None:
        key = (item.get("blockHash"), item.get("logIndex"), bool(item.get("removed")))
        if key in sub.recent:
            return  # already delivered: the backfill and the live subscription overlap
        sub.recent.append(key)
        with contextlib.suppress(TypeError, ValueError):
            number = int(str(item.get("blockNumber")), 16)
            sub.log_block = number if sub.log_block is None else max(sub.log_block, number)
        self._fan_out(sub, item)

    async def _read(self, conn: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in conn:
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.warning("chain %s: upstream sent invalid JSON", self.chain)
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)

    def _dispatch(self, message: JSON) -> None:
        if message.get("method") == "eth_subscription":
            params = message.get("params") or {}
            sub = self._by_upstream.get(str(params.get("subscription")))
            self.counters["notifications_in"] += 1
            if sub is None:
                return  # unsubscribed a moment ago: a late notification
            result = params.get("result")
            if sub.kind == "newHeads":
                self._heads.put_nowait((sub, result or {}))
            elif sub.kind == "logs":
                if sub.held is not None:
                    sub.held.append(result or {})
                else:
                    self._deliver_log(sub, result or {})
            else:
                self._fan_out(sub, result)
            return
        request_id = message.get("id")
        entry = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if entry is not None:
            future, on_reply = entry
            if on_reply is not None:  # runs in the reader, before any later notification
                on_reply(message)
            if not future.done():
                future.set_result(message)

    async def _call(
        self, method: str, params: list[Any], on_reply: Callable[[JSON], None] | None = None
    ) -> JSON:
        """One request over the upstream socket; the whole reply object."""
        conn = self._conn
        if conn is None:
            raise UpstreamUnavailable(f"chain {self.chain}: no upstream connected")
        request_id = next(self._ids)
        future: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_reply)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            await conn.send(orjson.dumps(body).decode())
            return await asyncio.wait_for(future, self.request_timeout)
        finally:
            self._pending.pop(request_id, None)

    async def _ensure_upstream(self, sub: _UpstreamSub) -> None:
        """Subscribe ``sub`` upstream once, however many clients ask at the same time."""
        if sub.upstream_id is not None:
            return
        if sub.inflight is None or sub.inflight.done():
            sub.inflight = asyncio.create_task(self._subscribe_upstream(sub))
        await asyncio.shield(sub.inflight)

    async def _subscribe_upstream(self, sub: _UpstreamSub) -> None:
        def bind(reply: JSON) -> None:
            result = reply.get("result")
            if isinstance(result, str):
                sub.upstream_id = result
                self._by_upstream[result] = sub

        reply = await self._call("eth_subscribe", sub.params, bind)
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise RpcError(
                int(error.get("code", -32000)), str(error.get("message", "refused upstream"))
            )

    # -- delivery -------------------------------------------------------------------

    def _fan_out(self, sub: _UpstreamSub, result: object) -> None:
        encoded = orjson.dumps(result).decode()
        for client_id, client in list(sub.clients.items()):
            text = (
                '{"jsonrpc":"2.0","method":"eth_subscription","params":'
                f'{{"subscription":"{client_id}","result":{encoded}}}}}'
            )
            self._enqueue(client, text)

    def _enqueue(self, client: _Client, text: str) -> None:
        try:
            client.outbox.put_nowait(text)
            self.counters["notifications_out"] += 1
        except asyncio.QueueFull:
            # A client that cannot keep up is cut off, as nodes do, rather than buffered
            # without bound: it reconnects and resubscribes.
            self.counters["dropped"] += 1
            self._detach(client)
            with contextlib.suppress(asyncio.QueueFull):
                client.outbox.put_nowait(None)

    async def _head_worker(self) -> None:
        """Delivers heads in order: drops backward ones, backfills a gap after reconnect."""
        while True:
            sub, head = await self._heads.get()
            try:
                number = int(str(head.get("number")), 16)
            except ValueError:
                continue
            if sub.last_number is not None:
                if number < sub.last_number or (
                    number == sub.last_number and head.get("hash") == sub.last_hash
                ):
                    continue  # a lagging upstream after failover, or a repeat
                gap = number - sub.last_number - 1
                if sub.resumed and 0 < gap <= self.backfill_limit:
                    for missing in range(sub.last_number + 1, number):
                        filled = await self._fetch_header(missing)
                        if filled is None:
                            break
                        await self._deliver_head(sub, missing, filled)
            sub.resumed = False
            await self._deliver_head(sub, number, head)

    async def _fetch_header(self, number: int) -> JSON | None:
        return await self._fetch_header_tag(hex(number))

    async def _fetch_header_tag(self, tag: str) -> JSON | None:
        try:
            reply = await self._call("eth_getBlockByNumber", [tag, False])
        except (ConnectionError, ConnectionClosed, TimeoutError):
            return None
        block = reply.get("result")
        if not isinstance(block, dict):
            return None
        return {k: v for k, v in block.items() if k not in _HEADER_ONLY_DROP}

    async def _deliver_head(self, sub: _UpstreamSub, number: int, head: JSON) -> None:
        sub.last_number = number
        sub.last_hash = head.get("hash")
        self._fan_out(sub, head)
        if self.on_new_head is not None:
            try:
                outcome = self.on_new_head(head)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("chain %s: on_new_head failed", self.chain)

    # -- clients --------------------------------------------------------------------

    async def serve(self, websocket: Any, *, admit: Admit | None = None) -> None:
        """Serve one client socket until it closes.

        Accepts a Starlette ``WebSocket`` (accepted here if not yet), an aiohttp
        ``WebSocketResponse`` (already prepared) or a ``websockets`` server connection.
        ``admit`` (the gateway's rate limits for this socket's API key or IP) is asked
        before each message, subscriptions included; a refused message is answered
        with its error and not processed.
        """
        socket = await _adapt(websocket)
        client = _Client(socket, asyncio.Queue(self.client_queue), admit=admit)
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client))
        requests: set[asyncio.Task[None]] = set()
        limit = asyncio.Semaphore(64)
        try:
            while not writer.done():
                raw = await socket.receive()
                if raw is None:
                    break
                await limit.acquire()
                task = asyncio.create_task(self._answer(client, raw))
                requests.add(task)

                def done(finished: asyncio.Task[None]) -> None:
                    requests.discard(finished)
                    limit.release()

                task.add_done_callback(done)
        finally:
            self._detach(client)
            self._clients.discard(client)
            for task in requests:
                task.cancel()
            with contextlib.suppress(asyncio.QueueFull):
                client.outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, 1.0)

    async def _write(self, client: _Client) -> None:
        while True:
            text = await client.outbox.get()
            if text is None:
                with contextlib.suppress(Exception):
                    await client.socket.close()
                return
            try:
                await client.socket.send(text)
            except Exception:  # the client went away; the reader side ends the session
                return

    async def _answer(self, client: _Client, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            reply: object = _error(None, RpcError(-32700, "parse error"))
        else:
            refused = await client.admit(message) if client.admit is not None else None
            if refused is not None:
                request_id = message.get("id") if isinstance(message, dict) else None
                reply = {"jsonrpc": "2.0", "id": request_id, "error": refused}
            elif isinstance(message, list):
                if not message:
                    reply = _error(None, RpcError(-32600, "empty batch"))
                elif len(message) > self.max_batch:
                    reply = _error(None, RpcError(-32600, f"batch over {self.max_batch} calls"))
                else:
                    replies = await asyncio.gather(*(self._one(client, m) for m in message))
                    reply = [r for r in replies if r is not None]
            else:
                reply = await self._one(client, message)
        if reply is not None and reply != []:
            self._enqueue_reply(client, orjson.dumps(reply).decode())

    def _enqueue_reply(self, client: _Client, text: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            client.outbox.put_nowait(text)

    async def _one(self, client: _Client, message: object) -> JSON | None:
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return _error(None, RpcError(-32600, "invalid request"))
        request_id = message.get("id")
        method = message["method"]
        params = message.get("params") or []
        try:
            if method == "eth_subscribe":
                if not isinstance(params, list) or not params or not isinstance(params[0], str):
                    raise RpcError(-32602, "eth_subscribe takes [kind, filter?]")
                result: object = await self._subscribe(client, params[0], params[1:])
            elif method == "eth_unsubscribe":
                if not isinstance(params, list) or len(params) != 1:
                    raise RpcError(-32602, "eth_unsubscribe takes [subscription id]")
                result = self._unsubscribe(client, str(params[0]))
            else:
                return await self._forward(message)
        except RpcError as exc:
            return _error(request_id, exc)
        except (ConnectionError, ConnectionClosed, TimeoutError):
            return _error(request_id, RpcError(-32000, "upstream unavailable, retry"))
        except Exception:  # a bug must cost one answer, never the client's socket
            log.exception("chain %s: WebSocket request %s failed", self.chain, method)
            return _error(request_id, RpcError(-32603, "internal error"))
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _subscribe(self, client: _Client, kind: str, params: list[Any]) -> str:
        kind, key, upstream_params = subscription_key(kind, params)
        if len(client.subs) >= self.max_client_subscriptions:
            limit = self.max_client_subscriptions
            raise RpcError(-32005, f"too many subscriptions on this socket (limit {limit})")
        sub = self._subs.get((kind, key))
        fresh = sub is None
        if sub is None:
            sub = self._subs[(kind, key)] = _UpstreamSub(kind, key, upstream_params)
        client_id = "0x" + secrets.token_hex(16)
        sub.clients[client_id] = client
        client.subs[client_id] = sub
        if fresh or sub.upstream_id is None:
            if not await self.wait_connected(self.request_timeout):
                self._drop_client_sub(client, client_id)
                raise RpcError(-32000, "no upstream WebSocket connected, retry")
            if sub.upstream_id is None:
                try:
                    await self._ensure_upstream(sub)
                except RpcError:
                    self._drop_client_sub(client, client_id)
                    raise
                except (ConnectionError, ConnectionClosed, TimeoutError):
                    pass  # the connection dropped; the reconnect resubscribes this one
        if sub.kind == "logs" and sub.log_block is None:
            # Logs after this block are the client's: a reconnect backfills from here.
            with contextlib.suppress(ConnectionError, ConnectionClosed, TimeoutError, ValueError):
                head = (await self._call("eth_blockNumber", [])).get("result")
                if sub.log_block is None:
                    sub.log_block = int(str(head), 16) + 1
        return client_id

    def _unsubscribe(self, client: _Client, client_id: str) -> bool:
        if client_id not in client.subs:
            return False
        self._drop_client_sub(client, client_id)
        return True

    def _drop_client_sub(self, client: _Client, client_id: str) -> None:
        sub = client.subs.pop(client_id, None)
        if sub is None:
            return
        sub.clients.pop(client_id, None)
        if sub.clients or sub.internal:
            return
        self._subs.pop((sub.kind, sub.key), None)
        if sub.upstream_id is not None:
            self._by_upstream.pop(sub.upstream_id, None)
            upstream_id, sub.upstream_id = sub.upstream_id, None
            task = asyncio.ensure_future(self._call("eth_unsubscribe", [upstream_id]))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _detach(self, client: _Client) -> None:
        for client_id in list(client.subs):
            self._drop_client_sub(client, client_id)

    async def _forward(self, message: JSON) -> JSON | None:
        if self.rpc_handler is not None:
            raw = await self.rpc_handler(orjson.dumps(message))
            if not raw.strip():
                return None  # a notification: no answer
            try:
                reply = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise RpcError(-32603, "internal error: the gateway's reply was not JSON") from exc
            return reply if isinstance(reply, dict) else None
        if not await self.wait_connected(self.request_timeout):
            raise UpstreamUnavailable(f"chain {self.chain}: no upstream connected")
        params = message.get("params")
        reply = await self._call(str(message["method"]), params if params is not None else [])
        if "id" not in message:
            return None  # a notification gets no answer
        return {**reply, "id": message["id"]}


def _error(request_id: object, exc: RpcError) -> JSON:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.as_dict()}


# -- client socket adapters -------------------------------------------------------------


class _Starlette:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes")

    async def send(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self) -> None:
        await self.ws.close()


class _Aiohttp:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        message = await self.ws.receive()
        data = message.data
        return data if isinstance(data, str | bytes) and message.type in (1, 2) else None

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def close(self) -> None:
        await self.ws.close()


class _Websockets:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        try:
            data: str | bytes = await self.ws.recv()
        except ConnectionClosed:
            return None
        return data

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def close(self) -> None:
        await self.ws.close()


async def _adapt(websocket: Any) -> _ClientSocket:
    if hasattr(websocket, "receive_text"):  # Starlette / FastAPI
        state = getattr(websocket, "client_state", None)
        if state is not None and state.name == "CONNECTING":
            await websocket.accept()
        return _Starlette(websocket)
    if hasattr(websocket, "send_str"):  # aiohttp.web.WebSocketResponse
        return _Aiohttp(websocket)
    return _Websockets(websocket)
