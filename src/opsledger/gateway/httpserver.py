"""uvicorn's httptools protocol with one socket write per response instead of two.

Why: uvicorn writes the response head (``http.response.start``) and the body
(``http.response.body``) with two ``transport.write`` calls; each is a ``send`` system
call and, with ``TCP_NODELAY``, a packet of its own on the client's side. py-spy put
those two writes at about a fifth of the gateway's CPU on cached answers
(``docs/gateway-benchmark.md``). ``_CorkedTransport`` holds the writes made during one
event-loop iteration and sends them as one at the end of it (``call_soon``), so a
head and body written back to back leave together. Nothing else about uvicorn changes:
parsing, keep-alive, flow control, WebSocket upgrades all stay its own.

Relies on uvicorn's ``HttpToolsProtocol`` setting ``self.transport`` in
``connection_made`` and reading it from there afterwards (true for uvicorn 0.2x-0.5x;
``tests/gateway`` serve every test through this class, so a change shows up there).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CorkedHttpToolsProtocol"]


class _CorkedTransport:
    """A transport whose writes within one loop iteration are joined into one write."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._buffer))

    def close(self) -> None:
        self._flush()  # what was written before close() still goes out
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._buffer.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through a ``_CorkedTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CorkedTransport(transport, self.loop)  # type: ignore[assignment]
