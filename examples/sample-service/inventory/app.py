"""The HTTP front: GET /stock/<sku>, POST /stock/<sku>?add=N, GET /ping?host=H."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

from inventory.ops import ping_host
from inventory.store import Stock


def load_settings(path: Path) -> dict[str, object]:
    return yaml.safe_load(path.read_text()) or {}


def make_handler(stock: Stock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path.startswith("/stock/"):
                self._reply(200, {"level": stock.level(url.path.removeprefix("/stock/"))})
            elif url.path == "/ping":
                host = parse_qs(url.query).get("host", ["127.0.0.1"])[0]
                self._reply(200, {"exit": ping_host(host)})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            count = int(parse_qs(url.query).get("add", ["1"])[0])
            sku = url.path.removeprefix("/stock/")
            self._reply(200, {"level": stock.add(sku, count)})

    return Handler


def serve(address: tuple[str, int] = ("127.0.0.1", 8080)) -> None:
    ThreadingHTTPServer(address, make_handler(Stock())).serve_forever()
