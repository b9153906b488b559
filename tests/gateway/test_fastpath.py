"""The bare ASGI ``POST /rpc/...`` endpoint in front of Starlette, driven at the ASGI
level (no network, no upstream): routing, body limits, disconnects, what stays with
Starlette."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from opsledger.gateway.config import parse_config
from opsledger.gateway.server import build_app
from opsledger.gateway.service import Gateway


def _app(max_body: int = 1000) -> Any:
    config = parse_config(
        {
            "listen": "127.0.0.1:8545",
            "chains": [
                {
                    "name": "local",
                    "chain_id": 31337,
                    "upstreams": [{"name": "a", "url": "http://127.0.0.1:9/"}],
                }
            ],
            "limits": {"max_body_bytes": max_body},
        },
        "test",
    )
    return build_app(Gateway(config))


def _call(
    app: Any, method: str, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        incoming = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8545),
        }
        await app(scope, receive, send)
        return sent

    return asyncio.run(scenario())


def _status_and_body(sent: list[dict[str, Any]]) -> tuple[int, bytes, dict[bytes, bytes]]:
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body, dict(start["headers"])


def test_rpc_errors_answered_without_an_upstream() -> None:
    app = _app()
    status, body, headers = _status_and_body(_call(app, "POST", "/rpc/nochain", [b"{}"], []))
    assert status == 404
    assert orjson.loads(body)["error"]["code"] == -32601
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"content-type"] == b"application/json"
    # An empty body is a parse error, not "too large".
    status, body, _ = _status_and_body(_call(app, "POST", "/rpc/local", [b""], []))
    assert (status, orjson.loads(body)["error"]["code"]) == (200, -32700)
    # Unknown API key on the keyed path.
    status, body, _ = _status_and_body(_call(app, "POST", "/rpc/local/nokey", [b"{}"], []))
    assert status == 401


def test_body_limit_by_header_and_by_stream() -> None:
    app = _app(max_body=100)
    declared = [(b"content-length", b"5000")]
    status, body, _ = _status_and_body(_call(app, "POST", "/rpc/local", [b"{}"], declared))
    assert status == 413
    assert orjson.loads(body)["error"]["code"] == -32600
    chunks = [b"[" + b" " * 60, b" " * 60 + b"]"]  # no Content-Length, streamed past it
    status, _, _ = _status_and_body(_call(app, "POST", "/rpc/local", chunks, []))
    assert status == 413
    # Chunked within the limit: reassembled and parsed (a bad request, not 413).
    status, body, _ = _status_and_body(_call(app, "POST", "/rpc/local", [b"[", b"]"], []))
    assert (status, orjson.loads(body)["error"]["code"]) == (200, -32600)


def test_disconnect_before_the_body_sends_nothing() -> None:
    assert _call(_app(), "POST", "/rpc/local", [], []) == []


def test_other_methods_and_paths_stay_with_starlette() -> None:
    app = _app()
    status, _, headers = _status_and_body(_call(app, "GET", "/rpc/local", [b""], []))
    assert status == 405
    assert b"POST" in headers[b"allow"]
    status, _, _ = _status_and_body(_call(app, "POST", "/rpc/a/b/c", [b"{}"], []))
    assert status == 404
    status, body, _ = _status_and_body(_call(app, "GET", "/healthz", [b""], []))
    assert (status, body) == (200, b'{"status":"ok"}')
