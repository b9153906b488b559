"""An async Ethereum JSON-RPC client: batching, retries, counters.

Why not web3.py's provider: the indexer needs HTTP batches of mixed calls, bounded retries
that never retry a "range too large" answer (the backfill splits the range instead), and
call/error counts for the metrics.

Why the standard library's ``http.client`` in worker threads instead of aiohttp: importing
aiohttp cost 0.13-0.2 s of every ``opsledger index --once`` (a sixth of a 24,000-event
backfill), and the indexer only ever POSTs a few large requests to one node. A request runs
in a thread of the client's own small pool (the socket reads release the GIL, so the next
range's reply arrives while this one is decoded); the event loop awaits it. Parsing HTTP
(chunked or sized bodies, keep-alive, TLS) stays with ``http.client``; this module only
pools connections per node and decides what is retried.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

__all__ = ["RpcClient", "RpcError", "RpcStats", "RpcTransportError"]


def _loads(raw: bytes) -> Any:
    """orjson (a big ``eth_getLogs`` reply parses several times faster than with ``json``);
    ``json`` only for what orjson refuses but ``json`` reads (integers beyond 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class RpcError(Exception):
    """The node answered with a JSON-RPC error (not retried: the caller decides)."""

    def __init__(self, method: str, error: Any) -> None:
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        super().__init__(f"{method}: {message}")
        self.method = method
        self.error = error
        self.text = message


class RpcTransportError(Exception):
    """The node could not be reached or answered garbage, after the retries."""


@dataclass(slots=True)
class RpcStats:
    requests: int = 0  # HTTP requests
    calls: int = 0  # JSON-RPC method calls (a batch of n counts n)
    errors: int = 0
    by_method: dict[str, int] = field(default_factory=dict)


class _Retry(Exception):
    """An answer worth retrying (HTTP 429 or 5xx)."""


class _Http:
    """Keep-alive ``http.client`` connections to one URL, used from worker threads."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        self._idle: list[HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self) -> HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self.https:
            import ssl  # only for https nodes: a TLS context costs ~25 ms to build
            from http.client import HTTPSConnection

            context = ssl.create_default_context()
            return HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        return HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST; a broken connection is dropped, a healthy one kept."""
        conn = self._connection()
        try:
            conn.request("POST", self.path, body, self.headers)
            response = conn.getresponse()
            raw = response.read()
        except BaseException:
            conn.close()
            raise
        with self._lock:
            keep = not (response.will_close or self._closed)
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()
        return response.status, raw

    def close(self) -> None:
        """Close the idle connections; one still in use closes when its request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class RpcClient:
    """One node. ``async with RpcClient(url) as rpc: await rpc.call("eth_blockNumber")``."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 20.0,
        retries: int = 4,
        backoff: float = 0.2,
        max_connections: int = 16,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_connections = max_connections
        self.stats = RpcStats()
        self._ids = itertools.count(1)
        self._http: _Http | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> RpcClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._http is None:
            try:
                self._http = _Http(self.url, self.timeout)
            except ValueError as exc:
                raise RpcTransportError(str(exc)) from None
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, self.max_connections), thread_name_prefix="indexer-rpc"
            )

    async def close(self) -> None:
        if self._pool is not None:
            # Requests still running (an abandoned prefetch) finish within their timeout.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def _exchange(self, http: _Http, body: bytes, label: str) -> Any:
        """In a worker thread: POST and parse the reply (4xx: a JSON error or RpcError)."""
        status, raw = http.post(body)
        if status == 429 or status >= 500:
            raise _Retry(f"{label}: HTTP {status}")
        if status >= 400:
            # Some providers answer an oversized range with HTTP 4xx + JSON error.
            try:
                return _loads(raw)
            except ValueError:
                text = raw[:200].decode("utf-8", "replace")
                raise RpcError(label, f"HTTP {status}: {text}") from None
        return _loads(raw)

    async def _post(self, payload: Any, label: str) -> Any:
        """POST with bounded retries on transport failures and 5xx/429 answers."""
        await self.open()
        http, pool = self._http, self._pool
        assert http is not None
        assert pool is not None
        body = orjson.dumps(payload)
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            self.stats.requests += 1
            try:
                future = loop.run_in_executor(pool, self._exchange, http, body, label)
                # The socket timeout bounds each read; this bounds the whole exchange.
                return await asyncio.wait_for(future, self.timeout)
            except RpcError:
                self.stats.errors += 1
                raise
            except _Retry as exc:
                self.stats.errors += 1
                last = RpcTransportError(str(exc))
            except (OSError, HTTPException, TimeoutError, ValueError) as exc:
                self.stats.errors += 1
                last = exc
        raise RpcTransportError(f"{label}: {last!r} after {self.retries + 1} attempts")

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        self.stats.calls += 1
        self.stats.by_method[method] = self.stats.by_method.get(method, 0) + 1
        payload = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": list(params),
        }
        reply = await self._post(payload, method)
        if not isinstance(reply, dict):
            self.stats.errors += 1
            raise RpcTransportError(f"{method}: not a JSON-RPC reply")
        if "error" in reply:
            self.stats.errors += 1
            raise RpcError(method, reply["error"])
        return reply.get("result")

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP request; results in call order. Any error raises."""
        if not calls:
            return []
        if len(calls) == 1:
            return [await self.call(*calls[0])]
        ids = [next(self._ids) for _ in calls]
        for method, _ in calls:
            self.stats.calls += 1
            self.stats.by_method[method] = self.stats.by_method.get(method, 0) + 1
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        reply = await self._post(payload, f"batch of {len(calls)} {calls[0][0]}")
        if isinstance(reply, dict) and "error" in reply:
            self.stats.errors += 1
            raise RpcError(calls[0][0], reply["error"])
        if not isinstance(reply, list):
            self.stats.errors += 1
            raise RpcTransportError("batch: not a JSON-RPC batch reply")
        by_id = {item.get("id"): item for item in reply if isinstance(item, dict)}
        results = []
        for i, (method, _) in zip(ids, calls, strict=True):
            item = by_id.get(i)
            if item is None:
                self.stats.errors += 1
                raise RpcTransportError(f"batch: no answer for {method}")
            if "error" in item:
                self.stats.errors += 1
                raise RpcError(method, item["error"])
            results.append(item.get("result"))
        return results

    # -- typed helpers --------------------------------------------------------------------
    async def block_number(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)

    async def blocks(self, numbers: Sequence[int], batch_size: int = 50) -> list[dict[str, Any]]:
        """Headers (no transactions) of ``numbers``, in order; missing blocks raise."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(numbers), batch_size):
            part = numbers[start : start + batch_size]
            results = await self.batch([("eth_getBlockByNumber", [hex(n), False]) for n in part])
            for n, block in zip(part, results, strict=True):
                if not block:
                    raise RpcTransportError(f"block {n} is not available")
                out.append(block)
        return out

    async def get_logs(
        self, addresses: Sequence[str], topics0: Sequence[str], first: int, last: int
    ) -> list[dict[str, Any]]:
        params = {
            "fromBlock": hex(first),
            "toBlock": hex(last),
            "address": list(addresses),
            "topics": [list(topics0)],
        }
        result = await self.call("eth_getLogs", [params])
        return list(result or [])
