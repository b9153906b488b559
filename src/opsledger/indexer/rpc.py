"""An async Ethereum JSON-RPC client over aiohttp: batching, retries, counters.

Why not web3.py's provider: the indexer needs HTTP batches of mixed calls, bounded retries
that never retry a "range too large" answer (the backfill splits the range instead), and
call/error counts for the metrics; those are a few lines over aiohttp.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
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
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RpcClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # No TLS context for a plain-http node (building one costs ~25 ms).
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections,
                    ssl=self.url.lower().startswith("https:"),
                ),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, payload: Any, label: str) -> Any:
        """POST with bounded retries on transport failures and 5xx/429 answers."""
        await self.open()
        assert self._session is not None
        body = orjson.dumps(payload)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            self.stats.requests += 1
            try:
                async with self._session.post(
                    self.url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    if response.status == 429 or response.status >= 500:
                        self.stats.errors += 1
                        last = RpcTransportError(f"{label}: HTTP {response.status}")
                        continue
                    raw = await response.read()
                    if response.status >= 400:
                        # Some providers answer an oversized range with HTTP 4xx + JSON error.
                        try:
                            return _loads(raw)
                        except ValueError:
                            self.stats.errors += 1
                            text = raw[:200].decode("utf-8", "replace")
                            raise RpcError(label, f"HTTP {response.status}: {text}") from None
                    return _loads(raw)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
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
