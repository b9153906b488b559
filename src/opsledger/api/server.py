"""``serve``: run the API for one home with uvicorn, as the home's one writer.

Order matters, and each step says why:

1. parse ``host:port`` (a bad value is a ``ConfigError`` before anything is touched);
2. open the writable node, which takes ``node.lock``: a second server, or a CLI command
   writing directly, is refused instead of forking the ledger;
3. bind the socket ourselves, on exactly the host given (default 127.0.0.1; nothing else
   is ever bound), so a busy port is a clear ``ConfigError`` and port 0 works (tests);
4. write ``serve.json`` only once uvicorn accepts connections, so a client that finds the
   file can connect; other commands use it (with the held lock) to talk HTTP;
5. on SIGINT/SIGTERM uvicorn finishes in-flight requests, then we remove ``serve.json``
   and close the node (the committer drains, the lock is released).

If the process is killed instead, ``serve.json`` stays behind but the lock dies with the
process, and ``Home.server_url`` treats a file without a held lock as stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from opsledger.api.app import create_app
from opsledger.api.webhooks import enable_github_webhook
from opsledger.app import Home, load_github_webhook
from opsledger.app.signals import stop_on_signals
from opsledger.client.local import LocalClient
from opsledger.core import ConfigError

__all__ = ["DEFAULT_HOST", "parse_listen", "serve"]

DEFAULT_HOST = "127.0.0.1"
GRACEFUL_SHUTDOWN_SECONDS = 10


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``port`` (host 127.0.0.1), ``[v6 address]:port``."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(
                f"listen address {listen!r}: expected [ADDRESS]:PORT", key="api.listen"
            )
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ConfigError(
            f"listen address {listen!r}: write IPv6 addresses as [ADDRESS]:PORT", key="api.listen"
        )
    elif ":" in text:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = "", text
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"listen address {listen!r}: the port must be a number 0-65535", key="api.listen"
        )
    host = host or DEFAULT_HOST
    if any(c.isspace() for c in host):
        raise ConfigError(f"listen address {listen!r}: bad host", key="api.listen")
    return host, int(port_text)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot resolve listen host {host!r}: {exc}", key="api.listen") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", key="api.listen"
        ) from exc
    return sock


def _url(host: str, port: int) -> str:
    """The URL clients use; a wildcard bind is reached through loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - mapping, not binding
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _write_serve_file(path: Path, url: str) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    os.replace(tmp, path)


def _remove_serve_file(path: Path) -> None:
    """Remove ``serve.json`` if it is ours (its pid is this process)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


class _Server(uvicorn.Server):
    """uvicorn, calling ``on_started`` once its sockets accept connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


def serve(home: Home, listen: str, *, access_log: bool = False) -> None:
    """Serve ``home``'s ledger on ``listen`` until SIGINT/SIGTERM. Raises ``ConfigError``
    for a bad address, a busy port, or when another process writes this home."""
    host, port = parse_listen(listen)
    github = load_github_webhook(home)  # config errors stop us before anything binds
    node = home.open_node()
    try:
        sock = _bind(host, port)
        try:
            url = _url(host, sock.getsockname()[1])
            app = create_app(LocalClient(node))
            enable_github_webhook(app, github)
            config = uvicorn.Config(
                app,
                log_level="warning",
                access_log=access_log,
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            )
            server = _Server(config, lambda: _write_serve_file(home.serve_path, url))
            with stop_on_signals():
                server.run(sockets=[sock])
        finally:
            sock.close()
            _remove_serve_file(home.serve_path)
    finally:
        node.close()
