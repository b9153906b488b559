"""A lean HTTP/1.1 POST client for JSON-RPC upstreams: keep-alive connections, one pool
per upstream, ``httptools`` parsing the responses.

Why hand-written: measured, not assumed. ``bench/gateway_stack.py`` runs the smallest
JSON-RPC forwarder (uvicorn, httptools, uvloop) against one anvil: with aiohttp's client
it costs 285 µs of CPU per forwarded request, with this client 60 µs, in the same run
(``docs/gateway-benchmark.md``); aiohttp's request building, header objects, stream
reader and timeout machinery were the largest single cost of the gateway's cache-miss
path (py-spy), and httpx was slower still. A JSON-RPC upstream needs only one request
shape (POST of a JSON body to one URL) and one response shape (a status and a body), so
the client is a small ``asyncio.Protocol``: the request head is built once per pool, a
request is one ``transport.write`` and the response is parsed by the same C parser
uvicorn uses.

What it does not do, on purpose: redirects, cookies, proxies, compression, HTTP/2,
request pipelining (one request in flight per connection). ``https`` works through
asyncio's TLS transport; user:password in the URL becomes a Basic ``Authorization``
header. A connection goes back to the pool only after a complete response the server
allowed to be kept alive; any error, timeout or cancellation closes it, so a late answer
can never be read as the answer to the next request.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

__all__ = ["ConnectFailed", "HttpPool", "ResponseFailed"]


class ConnectFailed(Exception):
    """The connection could not be opened: the request never left."""


class ResponseFailed(Exception):
    """The request was (or may have been) sent but no complete response came back."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    __slots__ = (
        "_chunks",
        "_headers_done",
        "_keep_alive",
        "_length_known",
        "_parser",
        "_status",
        "_waiter",
        "closed",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._chunks: list[bytes] = []
        self._headers_done = False
        self._length_known = False
        self._keep_alive = False
        self._status = 0

    # ---------------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseFailed(f"malformed HTTP response: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._length_known:
            self._finish()  # a body delimited by the end of the connection
            return
        reason = f"connection lost: {exc}" if exc else "server closed the connection"
        self._fail(ResponseFailed(reason))

    # ---------------------------------------------------------------- parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._length_known = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # ---------------------------------------------------------------- request side

    def start(self, request: bytes, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        self._waiter = waiter
        self._chunks = []
        self._headers_done = self._length_known = self._keep_alive = False
        assert self.transport is not None
        self.transport.write(request)

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed and self._waiter is None

    def abort(self) -> None:
        self.closed = True
        self._waiter = None
        if self.transport is not None:
            self.transport.abort()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, b"".join(self._chunks)))
        self._chunks = []

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _expire(waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class HttpPool:
    """Keep-alive connections to one URL; ``post`` returns ``(status, body)``.

    At most ``limit`` connections are open at once (further requests wait for one, as
    aiohttp's ``limit_per_host`` did); idle connections are reused most-recent first.
    """

    def __init__(self, url: str, *, limit: int = 256) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host_header = parts.hostname or self.host
        if ":" in host_header:
            host_header = f"[{host_header}]"
        if not default_port:
            host_header += f":{self.port}"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\n"
            "User-Agent: opsledger-gateway\r\n"
        )
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(userinfo.encode()).decode()
            head += f"Authorization: Basic {token}\r\n"
        self._head = (head + "Content-Length: ").encode("latin-1")
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._limit = limit
        self._queue: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.connections_opened = 0  # for tests and the benchmark: keep-alive reuse

    async def post(self, body: bytes, timeout: float | None = None) -> tuple[int, bytes]:
        """Send one POST; ``TimeoutError`` after ``timeout`` seconds (connecting and
        waiting for a free connection included). Cancellation is safe: the connection
        is closed, never reused."""
        loop = asyncio.get_running_loop()
        conn = self._idle_connection()
        if conn is None:
            if timeout is None:
                conn = await self._acquire()
            else:
                started = loop.time()
                async with asyncio.timeout(timeout):
                    conn = await self._acquire()
                timeout = max(0.0, timeout - (loop.time() - started))
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        # A bare timer on the response future: cheaper than ``asyncio.timeout`` (which
        # allocates a context manager and reschedules), and this is the miss path.
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            conn.start(b"%s%d\r\n\r\n%s" % (self._head, len(body), body), waiter)
            result = await waiter
        except BaseException:
            conn.abort()
            self._release(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._release(conn)
        return result

    def start(self, body: bytes, timeout: float) -> asyncio.Future[tuple[int, bytes]] | None:
        """``post`` without a coroutine, when an idle connection is at hand (else None:
        use ``post``): the request is written now and the returned future resolves
        with ``(status, body)`` or fails (``TimeoutError``, ``ResponseFailed``). The
        proxy's miss path uses it to wait for an answer, and race a hedge against it,
        without a task per upstream request. Cancelling the future closes the
        connection, as cancelling ``post`` does."""
        conn = self._idle_connection()
        if conn is None:
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            conn.start(b"%s%d\r\n\r\n%s" % (self._head, len(body), body), waiter)
        except BaseException:
            timer.cancel()
            conn.abort()
            self._release(conn)
            raise
        waiter.add_done_callback(lambda done: self._settle(conn, timer, done))
        return waiter

    def _settle(
        self,
        conn: _Connection,
        timer: asyncio.TimerHandle,
        waiter: asyncio.Future[tuple[int, bytes]],
    ) -> None:
        timer.cancel()
        if waiter.cancelled() or waiter.exception() is not None:
            conn.abort()  # a late answer must never be read as the next request's
        self._release(conn)

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open -= 1
        return None

    async def _acquire(self) -> _Connection:
        while True:
            conn = self._idle_connection()
            if conn is not None:
                return conn
            if self._closed:
                raise ConnectFailed("client closed")
            if self._open < self._limit:
                break
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._queue:
                    self._queue.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the slot we were given to the next waiter
                raise
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl)
        except BaseException as exc:
            self._open -= 1
            self._wake()
            if isinstance(exc, OSError):
                raise ConnectFailed(str(exc) or type(exc).__name__) from exc
            raise
        self.connections_opened += 1
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and not self._closed:
            self._idle.append(conn)
        else:
            if not conn.closed:
                conn.abort()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            conn = self._idle.pop()
            self._open -= 1
            if conn.transport is not None:
                conn.transport.close()
        for waiter in self._queue:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("client closed"))
        self._queue.clear()
