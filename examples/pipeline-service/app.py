"""shop: a tiny HTTP service to deploy. ``/`` says which version answers, ``/health`` says
whether it is healthy. The build step copies this file into ``dist/`` as the artifact.

The constants below are what a release changes; ``FAULT`` lets the examples and tests ship
a bad version on purpose: ``health`` (the health check fails), ``errors`` (``/`` answers
500 while ``/health`` stays green: only the switch's error-rate gate notices).
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "1.0.0"
FAULT = "none"  # none | health | errors


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, payload: dict[str, str]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            if FAULT == "health":
                self._send(500, {"status": "failing", "version": VERSION})
            else:
                self._send(200, {"status": "ok", "version": VERSION})
        elif FAULT == "errors":
            self._send(500, {"error": "broken release", "version": VERSION})
        else:
            self._send(200, {"service": "shop", "version": VERSION})

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="shop sample service")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
