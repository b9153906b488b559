"""Which server and client stack should the gateway use? Measured, not guessed.

Each variant is the smallest possible JSON-RPC forwarder: parse the request (to read its
id and method, as any gateway must), POST the body to one anvil, return the reply. With
``--static`` it answers from memory instead, which is the framework's own ceiling (what a
cache hit can at best cost). wrk drives every variant with the same cache-miss workload
as ``bench/gateway.py``. Run it as a script::

    .venv/bin/python bench/gateway_stack.py             # every variant, 4 s each
    .venv/bin/python bench/gateway_stack.py --seconds 2 --only uvicorn-asgi-aiohttp

Variants that need a package that is not installed (granian) are reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_load as load
import gateway_nodes as nodes
from opsledger.testing.anvil import Anvil, free_port

STATIC = b'{"jsonrpc":"2.0","id":1,"result":"0x0"}'
VARIANTS = {
    "uvicorn-asgi-aiohttp": "uvicorn (httptools, uvloop), bare ASGI app, aiohttp client, orjson",
    "uvicorn-starlette-aiohttp": "uvicorn (httptools, uvloop), Starlette Route, aiohttp client",
    "uvicorn-asgi-httpx": "uvicorn (httptools, uvloop), bare ASGI app, httpx client",
    "uvicorn-asgi-aiohttp-json": "as the first, stdlib json instead of orjson",
    "uvicorn-asgi-aiohttp-asyncio": "as the first, asyncio loop and h11 (no uvloop, no httptools)",
    "aiohttp-web": "aiohttp.web server (uvloop) and aiohttp client",
    "granian-asgi-aiohttp": "granian (Rust HTTP, ASGI interface, 1 worker), aiohttp client",
    "uvicorn-asgi-aiohttp-2workers": "as the first with 2 worker processes (SO_REUSEPORT)",
    "uvicorn-asgi-lean": "as the first, the gateway's own client (opsledger.gateway.httpclient)",
    "gateway-protocol-lean": "as uvicorn-asgi-lean, POST /rpc/* answered by the gateway's "
    "own connection protocol (opsledger.gateway.httpserver) instead of uvicorn's",
}


# -- the servers (run in a child process: `gateway_stack.py serve VARIANT PORT URL`) ---------


def _parse(body: bytes, stdlib: bool) -> Any:
    if stdlib:
        return json.loads(body)
    import orjson

    return orjson.loads(body)


def asgi_app(
    upstream: str, *, static: bool, client: str, stdlib_json: bool = False
) -> Callable[..., Awaitable[None]]:
    forward = make_forward(upstream, static=static, client=client)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = _parse(body, stdlib_json)
        if not isinstance(request, dict) or "method" not in request:
            raise ValueError("not a JSON-RPC request")
        reply = await forward(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": reply})

    return app


def make_forward(
    upstream: str, *, static: bool, client: str
) -> Callable[[bytes], Awaitable[bytes]]:
    """POST the body to ``upstream`` with ``client`` (or answer ``STATIC``)."""
    state: dict[str, Any] = {}

    async def forward(body: bytes) -> bytes:
        if static:
            return STATIC
        if client == "httpx":
            import httpx

            if "c" not in state:
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
                state["c"] = httpx.AsyncClient(limits=limits)
            response = await state["c"].post(
                upstream, content=body, headers={"Content-Type": "application/json"}
            )
            return bytes(response.content)
        if client == "lean":
            from opsledger.gateway.httpclient import HttpPool

            if "c" not in state:
                state["c"] = HttpPool(upstream, limit=64)
            _, data = await state["c"].post(body, 10.0)
            return bytes(data)
        import aiohttp

        if "c" not in state:
            state["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        async with state["c"].post(
            upstream, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            return bytes(await response.read())

    return forward


def rpc_protocol(upstream: str, *, static: bool) -> Any:
    """The gateway's own connection protocol (``opsledger.gateway.httpserver``) with a
    bare forwarder behind ``POST /rpc/...`` (static answers need no task at all)."""
    from opsledger.gateway.httpserver import RpcEndpoint, protocol_for

    forward = make_forward(upstream, static=False, client="lean")

    async def later(body: bytes) -> bytes:
        request = _parse(body, False)
        if not isinstance(request, dict) or "method" not in request:
            raise ValueError("not a JSON-RPC request")
        return await forward(body)

    def respond(chain: str, key: str | None, ip: str, body: bytes | None) -> Any:
        if static:
            return 200, STATIC, []
        return later(body or b"")

    return protocol_for(RpcEndpoint(respond, 1 << 20))


def starlette_app(upstream: str, *, static: bool) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    forward_state: dict[str, Any] = {}

    async def rpc(request: Request) -> Response:
        body = await request.body()
        _parse(body, False)
        if static:
            return Response(STATIC, media_type="application/json")
        import aiohttp

        if "c" not in forward_state:
            forward_state["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        async with forward_state["c"].post(
            upstream, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            return Response(await response.read(), media_type="application/json")

    return Starlette(routes=[Route("/", rpc, methods=["POST"])])


def serve(variant: str, port: int, upstream: str, static: bool) -> None:
    if variant == "aiohttp-web":
        import aiohttp
        import uvloop
        from aiohttp import web

        state: dict[str, Any] = {}

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            _parse(body, False)
            if static:
                return web.Response(body=STATIC, content_type="application/json")
            if "c" not in state:
                state["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
            async with state["c"].post(
                upstream, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                return web.Response(body=await response.read(), content_type="application/json")

        application = web.Application()
        application.router.add_post("/", handle)
        uvloop.install()
        web.run_app(application, host="127.0.0.1", port=port, access_log=None, print=None)
        return
    if variant.startswith("granian"):
        from granian.constants import Interfaces, Loops
        from granian.server import Server

        os.environ["GWSTACK_UPSTREAM"] = upstream
        os.environ["GWSTACK_STATIC"] = "1" if static else ""
        Server(
            "gateway_stack:env_app",
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            log_enabled=False,
        ).serve()
        return
    import uvicorn

    options: dict[str, Any] = {"host": "127.0.0.1", "port": port, "log_level": "warning"}
    options |= {"access_log": False, "http": "httptools", "loop": "uvloop"}
    if variant.endswith("-asyncio"):
        options |= {"http": "h11", "loop": "asyncio"}
    if variant == "uvicorn-starlette-aiohttp":
        app: Any = starlette_app(upstream, static=static)
    else:
        client = "httpx" if "httpx" in variant else "lean" if "lean" in variant else "aiohttp"
        if variant == "gateway-protocol-lean":
            options["http"] = rpc_protocol(upstream, static=static)
        app = asgi_app(
            upstream, static=static, client=client, stdlib_json=variant.endswith("-json")
        )
    if variant.endswith("2workers"):
        os.environ["GWSTACK_UPSTREAM"] = upstream
        os.environ["GWSTACK_STATIC"] = "1" if static else ""
        uvicorn.run("gateway_stack:env_app", workers=2, **options)
        return
    uvicorn.run(app, **options)


def _target_from_env() -> Callable[..., Awaitable[None]]:
    return asgi_app(
        os.environ.get("GWSTACK_UPSTREAM", ""),
        static=bool(os.environ.get("GWSTACK_STATIC")),
        client="aiohttp",
    )


def __getattr__(name: str) -> Any:
    if name == "env_app":  # built on import in each worker process
        return _target_from_env()
    raise AttributeError(name)


# -- the driver ----------------------------------------------------------------------------


SERVER_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def server(variant: str, upstream: Anvil, static: bool) -> Any:
    port = free_port()
    command = [sys.executable, __file__, "serve", variant, str(port), upstream.url]
    command += ["--static"] if static else []
    process = subprocess.Popen(
        command,
        cwd=str(Path(__file__).resolve().parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)},
    )
    try:
        nodes._wait_port(port, 20, process)
        time.sleep(0.3)
        url = f"http://127.0.0.1:{port}/"
        if variant == "gateway-protocol-lean":
            url += "rpc/bench"  # the only path that protocol answers without ASGI
        SERVER_PIDS[url] = process.pid
        yield url
    except RuntimeError as exc:
        error = process.stderr.read().decode(errors="replace")[-400:] if process.stderr else ""
        raise RuntimeError(f"{variant}: {exc}: {error}") from exc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with nodes.anvils(1, seeded=False) as (anvils, _):
        upstream = anvils[0]
        base = load.run_wrk(
            upstream.url, "anvil", "miss", kind="miss", connections=32, seconds=args.seconds
        )
        rows.append({"variant": "anvil direct", "miss_rps": base.rps, "miss_p50_ms": base.p50_ms})
        for variant in args.only or list(VARIANTS):
            row: dict[str, Any] = {"variant": variant}
            try:
                for static in (False, True):
                    print(f"stack: {variant} static={static}", file=sys.stderr, flush=True)
                    with server(variant, upstream, static) as url:
                        cpu0 = nodes.cpu_seconds(SERVER_PIDS[url])
                        result = load.run_wrk(
                            url, variant, "miss", kind="miss", connections=32, seconds=args.seconds
                        )
                        cpu = nodes.cpu_seconds(SERVER_PIDS[url]) - cpu0
                    prefix = "static" if static else "miss"
                    row[f"{prefix}_rps"] = result.rps
                    row[f"{prefix}_p50_ms"] = result.p50_ms
                    row[f"{prefix}_failed"] = result.failed
                    row[f"{prefix}_cpu_us"] = 1e6 * cpu / max(1, result.answered)
            except (RuntimeError, OSError) as exc:
                row["error"] = str(exc).splitlines()[0][:160]
            rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    out = [
        f"{'variant':<32} {'forward req/s':>13} {'p50 ms':>7} {'CPU µs/req':>10} "
        f"{'static req/s':>12} {'p50 ms':>7} {'CPU µs/req':>10}",
    ]
    for row in rows:
        if "error" in row:
            out.append(f"{row['variant']:<32} not measured: {row['error']}")
            continue
        out.append(
            f"{row['variant']:<32} {row['miss_rps']:>13,.0f} {row['miss_p50_ms']:>7.2f} "
            f"{row.get('miss_cpu_us', float('nan')):>10,.0f} "
            f"{row.get('static_rps', float('nan')):>12,.0f} "
            f"{row.get('static_p50_ms', float('nan')):>7.2f} "
            f"{row.get('static_cpu_us', float('nan')):>10,.0f}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        serve(argv[1], int(argv[2]), argv[3], "--static" in argv)
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--only", choices=list(VARIANTS), action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args)
    print(
        f"wrk, 32 connections, {args.seconds} s each, cache-miss eth_getBalance; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(render(rows))
    for name, text in VARIANTS.items():
        print(f"  {name}: {text}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
