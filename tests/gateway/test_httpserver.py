"""The gateway's own HTTP/1.1 protocol (``gateway/httpserver.py``) over real sockets:
keep-alive, pipelining in order, ``Expect: 100-continue``, body limits, chunked bodies,
HTTP/1.0, malformed requests, and the routes it hands to the ASGI app on the same
connection. The gateway here has no reachable upstream: these are HTTP behaviours."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from opsledger.gateway.config import parse_config
from opsledger.testing.anvil import free_port
from tests.gateway._support import Served, serving

BODY = b'{"jsonrpc":"2.0","id":7,"method":"eth_chainId"}'
BAD = b"{not json"


@pytest.fixture(scope="module")
def gw() -> Iterator[Served]:
    config = parse_config(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "chains": [
                {
                    "name": "local",
                    "chain_id": 31337,
                    "upstreams": [{"name": "a", "url": f"http://127.0.0.1:{free_port()}"}],
                }
            ],
            "limits": {"max_body_bytes": 2000, "request_timeout_s": 1},
            "health": {"timeout_s": 0.2},
        },
        "test",
    )
    with serving(config) as served:
        yield served


def _connect(gw: Served) -> socket.socket:
    host, port = gw.config.listen.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(10)
    return sock


def _post(body: bytes, path: str = "/rpc/local", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (``buffer`` keeps what belongs to the next one)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, headers, body


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(gw: Served) -> None:
    with _connect(gw) as sock:
        buffer = bytearray()
        sock.sendall(_post(BODY))
        status, headers, body = _read_response(sock, buffer)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert "date" in headers
        assert json.loads(body)["id"] == 7
        # Three requests in one write: one answered by a task (it goes through the
        # proxy), a parse error answered at once, and a GET for Starlette. Answers keep
        # the request order.
        sock.sendall(_post(BODY) + _post(BAD) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_response(sock, buffer)
        second = _read_response(sock, buffer)
        third = _read_response(sock, buffer)
        assert json.loads(first[2])["id"] == 7
        assert json.loads(second[2])["error"]["code"] == -32700
        assert (third[0], json.loads(third[2])) == (200, {"status": "ok"})


def test_other_routes_share_the_connection_with_json_rpc(gw: Served) -> None:
    with _connect(gw) as sock:
        buffer = bytearray()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = _read_response(sock, buffer)
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert b"gateway_requests_total" in body
        sock.sendall(b"GET /rpc/local HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock, buffer)[0] == 405
        sock.sendall(_post(BAD, path="/rpc/local/a/b"))  # not a JSON-RPC path: Starlette
        assert _read_response(sock, buffer)[0] in (404, 405)
        sock.sendall(_post(BODY, path="/rpc/nowhere"))
        assert _read_response(sock, buffer)[0] == 404
        sock.sendall(_post(BAD))
        assert json.loads(_read_response(sock, buffer)[2])["error"]["code"] == -32700


def test_expect_continue_body_limits_and_chunked_bodies(gw: Served) -> None:
    with _connect(gw) as sock:
        buffer = bytearray()
        head = _post(BAD, extra="Expect: 100-continue\r\n").removesuffix(BAD)
        sock.sendall(head)
        status, _, _ = _read_response(sock, buffer)
        assert status == 100
        sock.sendall(BAD)
        assert json.loads(_read_response(sock, buffer)[2])["error"]["code"] == -32700
        # A body over the limit: 413 with a JSON-RPC error, the connection stays usable.
        big = b"[" + b" " * 3000 + b"]"
        sock.sendall(_post(big))
        status, _, body = _read_response(sock, buffer)
        assert status == 413
        assert json.loads(body)["error"]["code"] == -32600
        # Chunked: reassembled, then parsed.
        sock.sendall(
            b"POST /rpc/local HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\n{not\r\n5\r\n json\r\n0\r\n\r\n"
        )
        assert json.loads(_read_response(sock, buffer)[2])["error"]["code"] == -32700
    with _connect(gw) as sock:
        # Announced too large with Expect: refused before the body is sent, then closed.
        sock.sendall(
            _post(b"", extra="Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 9999")
        )
        status, headers, _ = _read_response(sock, bytearray())
        assert status == 413
        assert headers["connection"] == "close"
        assert _closed(sock)


def test_http_1_0_and_connection_close_end_the_connection(gw: Served) -> None:
    for request in (
        _post(BAD).replace(b"HTTP/1.1", b"HTTP/1.0"),
        _post(BAD, extra="Connection: close\r\n"),
    ):
        with _connect(gw) as sock:
            sock.sendall(request)
            status, headers, body = _read_response(sock, bytearray())
            assert status == 200
            assert headers["connection"] == "close"
            assert json.loads(body)["error"]["code"] == -32700
            assert _closed(sock)


def test_a_malformed_request_gets_400_and_the_connection_closes(gw: Served) -> None:
    with _connect(gw) as sock:
        sock.sendall(b"POST /rpc/local HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        status, _, _ = _read_response(sock, bytearray())
        assert status == 400
        assert _closed(sock)
