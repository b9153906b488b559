"""A local webhook receiver for tests: records every JSON POST it gets, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["WebhookReceiver", "webhook_receiver"]


class WebhookReceiver:
    def __init__(self, server: ThreadingHTTPServer, received: list[dict[str, Any]]) -> None:
        self.server = server
        self.received = received
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first payload matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for payload in list(self.received):
                if predicate(payload):
                    return payload
            time.sleep(0.05)
        raise TimeoutError(f"no matching webhook within {timeout}s; got {self.received!r}")


@contextlib.contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"null"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebhookReceiver(server, received)
    finally:
        server.shutdown()
        server.server_close()
