"""The gateway's HTTP/1.1 connection protocol: ``POST /rpc/*`` answered straight from
the parser, every other request through the ASGI app, WebSocket upgrades handed to
uvicorn's WebSocket protocol.

Why hand-written: measured (``docs/gateway-benchmark.md``). uvicorn's httptools
protocol builds an ASGI scope, a ``RequestResponseCycle`` with an ``asyncio.Event``,
validates every response header and exchanges four ASGI messages per request: about
60 µs of CPU per request, the largest single cost of a cache hit. A JSON-RPC request
needs only its path, its body and one answer, so this protocol drives ``httptools``'
parser itself and writes each answer as one ``transport.write``; answers that need no
waiting (``RpcEndpoint.respond`` returns them instead of a coroutine: cached results,
the head view, errors) are written
from the parser callback without creating a task at all.

uvicorn still runs the server (``uvicorn.Config(http=...)``): listening socket,
lifespan, signals, graceful shutdown, the ``date``/``server`` headers
(``server_state.default_headers``). Everything that is not ``POST /rpc/...`` (health,
``/metrics``, ``/admin``, 404s and 405s, requests forwarded by a trusted proxy, so
``X-Forwarded-For`` keeps uvicorn's meaning) goes through ``config.loaded_app`` via a
small ASGI adapter (one buffered request body, one buffered response; none of those
routes streams). A WebSocket upgrade is handed over exactly as uvicorn's own protocol
does it: the request head is rebuilt and fed to ``config.ws_protocol_class``.

Requests are answered in order, one at a time per connection; pipelined requests wait
(reading pauses while any are queued). Idle keep-alive connections close after
``config.timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

__all__ = ["Answer", "Pending", "RpcEndpoint", "RpcHttpProtocol", "as_answer", "protocol_for"]

log = logging.getLogger(__name__)

# One answer of the JSON-RPC endpoint: status, body (None: empty), extra headers.
Answer = tuple[int, bytes | None, list[tuple[bytes, bytes]]]
# An answer that needs awaiting: it gives an ``Answer``, or the proxy's reply as is.
Pending = Coroutine[Any, Any, "Answer | bytes | None"]


@dataclass(frozen=True, slots=True)
class RpcEndpoint:
    """What ``POST /rpc/{chain}[/{api_key}]`` answers. ``respond(chain, api_key,
    client_ip, body)`` returns the answer itself when it needs no waiting, else a
    coroutine producing it; ``body`` None means larger than ``max_body``."""

    respond: Callable[[str, str | None, str, bytes | None], Answer | Pending]
    max_body: int


def as_answer(outcome: Answer | bytes | None) -> Answer:
    """What a ``Pending`` gave, as an answer: the proxy's reply is 200 (None: 204)."""
    if isinstance(outcome, tuple):
        return outcome
    if outcome is None:
        return 204, None, []
    return 200, outcome, []


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS = {code: _status_line(code) for code in range(100, 600)}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON_HEAD = b"content-type: application/json\r\ncontent-length: "


@dataclass(slots=True)
class _Request:
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | None  # None: larger than the limit
    keep_alive: bool
    http_version: str
    rpc: tuple[str, str | None] | None  # (chain, api_key) for POST /rpc/...


def _rpc_target(method: bytes, url: bytes) -> tuple[str, str | None] | None:
    if method != b"POST" or not url.startswith(b"/rpc/"):
        return None
    path = url.partition(b"?")[0][5:].decode("latin-1")
    if "%" in path:
        path = unquote(path)
    parts = path.split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


class RpcHttpProtocol(asyncio.Protocol):
    """One client connection (see the module docstring). Subclassed per gateway by
    ``protocol_for``, which sets ``endpoint``; uvicorn instantiates it per connection."""

    endpoint: RpcEndpoint

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = "unknown"
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int | None] | None = None
        self._scheme = "http"
        self._forwarded = False  # a trusted proxy's X-Forwarded-For: the ASGI path
        # per request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        # per connection
        self._busy = False
        self._queue: deque[_Request] = deque()
        self._closing = False
        self._write_paused = False
        self._read_paused = False
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._job: tuple[_Request, Pending | None] | None = None
        self._defaults_src: object = None
        self._defaults = b""

    # ---------------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self._server = get_local_addr(transport)  # type: ignore[arg-type]
        self._client = get_remote_addr(transport)  # type: ignore[arg-type]
        self.client_ip = self._client[0] if self._client else "unknown"
        self._scheme = "https" if is_ssl(transport) else "http"  # type: ignore[arg-type]
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._closing = True
        self._queue.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._wake is not None and not self._wake.done():
            # The worker is idle: end it. A busy one finishes its request first (the
            # read may be shared with other clients' through the coalescer).
            self._wake.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close; any answer still being computed is dropped

    def data_received(self, data: bytes) -> None:
        self._idle_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserError:
            self._send_400()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: idle connections close now, busy ones after
        the answer in progress."""
        self._closing = True
        self._queue.clear()
        if not self._busy and self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._chunks = []
        self._size = 0
        self._too_large = False
        self._forwarded = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        if name == b"content-length":
            if value.strip().isdigit() and int(value) > self.endpoint.max_body:
                self._too_large = True
        elif name == b"x-forwarded-for":
            self._forwarded = True

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # a WebSocket upgrade: ``data_received`` hands the connection over
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue" and self.transport:
                if self._too_large:
                    # Refuse before the client sends what we would not read.
                    self._closing = True
                    self._write(413, *self._too_large_answer())
                    self.transport.close()
                else:
                    self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        if self._size > self.endpoint.max_body:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        parser = self.parser
        if parser.should_upgrade():
            return
        method = parser.get_method()
        chunks = self._chunks
        body = None if self._too_large else (chunks[0] if len(chunks) == 1 else b"".join(chunks))
        request = _Request(
            method,
            self._url,
            self._headers,
            body,
            parser.should_keep_alive(),
            parser.get_http_version(),
            None if self._forwarded else _rpc_target(method, self._url),
        )
        if self._busy:
            self._queue.append(request)
            self._update_reading()
        else:
            self._dispatch(request)

    # ---------------------------------------------------------------- answering

    def _dispatch(self, request: _Request) -> None:
        self._busy = True
        target = request.rpc
        if target is not None:
            try:
                answer = self.endpoint.respond(target[0], target[1], self.client_ip, request.body)
            except Exception:  # a bug must cost one answer, never the connection
                log.exception("answering a JSON-RPC request failed")
                answer = 500, _INTERNAL, []
            if isinstance(answer, tuple):
                self._finish(request, *answer)
                return
            self._run(request, answer)
        else:
            self._run(request, None)

    def _run(self, request: _Request, pending: Pending | None) -> None:
        """Hand a request that needs awaiting to this connection's worker task."""
        self._job = (request, pending)
        if self._worker is None or self._worker.done():
            self._worker = self.loop.create_task(self._work())
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _work(self) -> None:
        """The connection's one task, answering its requests that need awaiting, one at
        a time (they are answered in order anyway). Why not a task per request: in
        Python 3.11 every task is registered in a ``WeakSet``, and creating, registering
        and dropping one per cache miss cost more than this wake-up (measured with
        py-spy, ``docs/gateway-benchmark.md``). Ends when the connection does."""
        loop = self.loop
        while True:
            job = self._job
            if job is None:
                if self._closing and not self._busy:
                    return
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
                continue
            self._job = None
            request, pending = job
            try:
                if pending is None:
                    await self._answer_asgi(request)
                else:
                    await self._answer_rpc(request, pending)
            except Exception:  # not the app's or the proxy's (those are answered): ours
                log.exception("answering a request failed; closing the connection")
                self._closing = True
                self._busy = False
                if self.transport is not None:
                    self.transport.close()

    async def _answer_rpc(self, request: _Request, pending: Pending) -> None:
        try:
            status, body, extra = as_answer(await pending)
        except Exception:
            log.exception("answering a JSON-RPC request failed")
            status, body, extra = 500, _INTERNAL, []
        self._finish(request, status, body, extra)

    def _finish(
        self, request: _Request, status: int, body: bytes | None, extra: list[tuple[bytes, bytes]]
    ) -> None:
        if not request.keep_alive:
            self._closing = True
        self._write(status, body, extra)
        self._done()

    def _write(self, status: int, body: bytes | None, extra: list[tuple[bytes, bytes]]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = _STATUS[status] + self._default_headers()
        if extra:
            head += b"".join(b"%s: %s\r\n" % pair for pair in extra)
        if self._closing:
            head += b"connection: close\r\n"
        if body is None:
            transport.write(head + b"content-length: 0\r\n\r\n")
        else:
            transport.write(b"%s%s%d\r\n\r\n%s" % (head, _JSON_HEAD, len(body), body))

    def _done(self) -> None:
        """The answer in progress is written: the next queued request, or idle."""
        self._busy = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._closing:
            transport.close()
            return
        if self._queue:
            request = self._queue.popleft()
            self._update_reading()
            self._dispatch(request)
            return
        self._idle_since = self.loop.time()

    def _default_headers(self) -> bytes:
        """uvicorn's ``date`` and ``server`` headers, joined once per change (uvicorn
        replaces the list every second)."""
        source = self.server_state.default_headers
        if source is not self._defaults_src:
            self._defaults_src = source
            self._defaults = b"".join(b"%s: %s\r\n" % pair for pair in source)
        return self._defaults

    def _too_large_answer(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        limit = self.endpoint.max_body
        message = f"request body exceeds {limit} bytes".encode()
        return (
            b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"%s"}}' % message,
            [],
        )

    def _send_400(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        message = b"Invalid HTTP request received."
        transport.write(
            _STATUS[400] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(message), message)
        )
        transport.close()

    # ------------------------------------------------------------------- reading

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self._write_paused or bool(self._queue)
        if pause and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not pause and self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def _arm_idle(self) -> None:
        self._idle_since = self.loop.time()
        self._idle_timer = self.loop.call_later(self.config.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        """Lazy keep-alive timeout: one timer per connection, re-armed only when it
        fires (not a timer per request)."""
        self._idle_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        timeout = self.config.timeout_keep_alive
        idle = self.loop.time() - self._idle_since
        if not self._busy and idle >= timeout:
            transport.close()
            return
        wait = timeout if self._busy else timeout - idle
        self._idle_timer = self.loop.call_later(wait, self._idle_check)

    # ------------------------------------------------------- the ASGI app's routes

    async def _answer_asgi(self, request: _Request) -> None:
        if request.body is None:
            self._closing = True
            self._finish(request, 413, *self._too_large_answer())
            return
        raw_path, _, query = request.url.partition(b"?")
        path = raw_path.decode("latin-1")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.3"},
            "http_version": request.http_version,
            "server": self._server,
            "client": self._client,
            "scheme": self._scheme,
            "method": request.method.decode("ascii", "replace"),
            "root_path": self.config.root_path,
            "path": self.config.root_path + (unquote(path) if "%" in path else path),
            "raw_path": self.config.root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": request.headers,
            "state": self.app_state.copy(),
        }
        adapter = _AsgiExchange(self, request.body)
        try:
            await self.app(scope, adapter.receive, adapter.send)
        except Exception:
            log.exception("ASGI app failed on %s", scope["path"])
            if not adapter.started:
                adapter.status, adapter.headers, adapter.chunks = (
                    500,
                    [],
                    [b"Internal Server Error"],
                )
                adapter.complete = True
            else:
                self._closing = True
        if not adapter.complete:
            self._closing = True  # the app never finished its response
            if adapter.started:
                self._done()
                return
            adapter.status, adapter.headers, adapter.chunks = 500, [], [b"Internal Server Error"]
        if not request.keep_alive:
            self._closing = True
        self._write_asgi(adapter)
        self._done()

    def _write_asgi(self, adapter: _AsgiExchange) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = b"".join(adapter.chunks)
        head = [_STATUS[adapter.status], self._default_headers()]
        has_length = False
        for name, value in adapter.headers:
            lowered = bytes(name).lower()
            if lowered == b"content-length":
                has_length = True
            head.append(b"%s: %s\r\n" % (lowered, bytes(value)))
        if not has_length:
            head.append(b"content-length: %d\r\n" % len(body))
        if self._closing:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        transport.write(b"".join(head) + body)

    def lost(self) -> asyncio.Future[None]:
        """Resolves when the client goes away (for ``http.disconnect``)."""
        if self._lost is None:
            self._lost = self.loop.create_future()
            if self.transport is None or self.transport.is_closing():
                self._lost.set_result(None)
        return self._lost

    # ------------------------------------------------------------------ WebSocket

    def _upgrade(self, rest: bytes) -> None:
        """Hand the connection to uvicorn's WebSocket protocol, as uvicorn's own
        httptools protocol does: rebuild the request head and feed it over."""
        transport = self.transport
        upgrade = b""
        for name, value in self._headers:
            if name == b"upgrade":
                upgrade = value.lower()
        ws_class = self.config.ws_protocol_class
        if transport is None or upgrade != b"websocket" or ws_class is None:
            log.warning("unsupported upgrade request")
            self._send_400()
            return
        self.server_state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        method = self.parser.get_method()
        output = [method, b" ", self._url, b" HTTP/1.1\r\n"]
        for name, value in self._headers:
            output += [name, b": ", value, b"\r\n"]
        output.append(b"\r\n")
        protocol = ws_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(transport)
        protocol.data_received(b"".join(output) + rest)
        transport.set_protocol(protocol)


_INTERNAL = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}'


class _AsgiExchange:
    """receive/send for one request to the ASGI app: the body in one message, the
    response buffered until complete."""

    __slots__ = (
        "body",
        "chunks",
        "complete",
        "headers",
        "protocol",
        "sent_body",
        "started",
        "status",
    )

    def __init__(self, protocol: RpcHttpProtocol, body: bytes) -> None:
        self.protocol = protocol
        self.body = body
        self.sent_body = False
        self.started = False
        self.complete = False
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def receive(self) -> dict[str, Any]:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.protocol.lost()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            self.status = int(message["status"])
            self.headers = list(message.get("headers", []))
        elif kind == "http.response.body" and self.started and not self.complete:
            self.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.complete = True
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")


def protocol_for(endpoint: RpcEndpoint) -> type[RpcHttpProtocol]:
    """The connection protocol class for one gateway (uvicorn's ``http=`` option)."""
    return type("GatewayHttpProtocol", (RpcHttpProtocol,), {"endpoint": endpoint})
