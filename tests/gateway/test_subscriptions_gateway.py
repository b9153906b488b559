"""WebSocket subscriptions end to end: ``opsledger gateway --config`` over two anvils.

The gateway runs as the subprocess users start; a client subscribes at
``ws://.../rpc/local`` and must keep receiving heads under the same subscription id while
the upstream it was attached to is restarted and then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from opsledger.testing.anvil import Anvil, free_port

WAIT = 20.0


@pytest.fixture
def gateway_and_nodes(tmp_path: Path) -> Iterator[tuple[str, list[Anvil]]]:
    # One genesis timestamp, so the gateway's genesis check sees one chain on both nodes.
    nodes = [Anvil.start(extra_args=["--timestamp", "1700000000"]) for _ in range(2)]
    port = free_port()
    upstreams = "\n".join(
        f'        - {{name: {name}, url: "{node.url}", ws_url: "{node.ws_url}"}}'
        for name, node in zip("ab", nodes, strict=True)
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway:\n"
        f'  listen: "127.0.0.1:{port}"\n'
        "  chains:\n"
        "    - name: local\n"
        "      chain_id: 31337\n"
        "      finality_depth: 2\n"
        "      upstreams:\n"
        f"{upstreams}\n"
    )
    exe = Path(sys.executable).with_name("opsledger")
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [str(exe), "gateway", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/rpc/local", process, tmp_path / "gateway.log")
        yield f"ws://127.0.0.1:{port}/rpc/local", nodes
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        for node in nodes:
            node.stop()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gateway exited: {log.read_text()[-2000:]}"
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(request, timeout=2) as response:
                if "result" in json.loads(response.read()):
                    return
        time.sleep(0.1)
    raise AssertionError(f"gateway not ready in {WAIT}s: {log.read_text()[-2000:]}")


async def next_message(conn: Any) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(conn.recv(), WAIT)))


@pytest.mark.anvil
@pytest.mark.slow
def test_new_heads_through_the_gateway_survive_upstream_restart_and_kill(
    gateway_and_nodes: tuple[str, list[Anvil]],
) -> None:
    url, nodes = gateway_and_nodes

    async def scenario() -> None:
        async with connect(url) as conn:
            await conn.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
                )
            )
            reply = await next_message(conn)
            sub_id = reply["result"]
            seen: list[int] = []

            async def heads_until(number: int) -> None:
                while not seen or seen[-1] < number:
                    note = await next_message(conn)
                    if note.get("method") != "eth_subscription":
                        continue
                    assert note["params"]["subscription"] == sub_id
                    seen.append(int(note["params"]["result"]["number"], 16))

            for node in nodes:
                node.mine(2)
            await heads_until(2)
            # Whichever node the hub is attached to, restart both in turn, then kill one:
            # the subscription must keep delivering under the same id.
            for node in nodes:
                await asyncio.to_thread(node.restart)
                for other in nodes:
                    other.mine(max(1, seen[-1] + 2 - other.block_number()))
                await heads_until(seen[-1] + 1)
            await asyncio.to_thread(nodes[0].kill)
            nodes[1].mine(3)
            target = nodes[1].block_number()
            await heads_until(target)
            assert seen == sorted(seen), f"heads went backwards: {seen}"
            await conn.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 2, "method": "eth_unsubscribe", "params": [sub_id]}
                )
            )
            while (reply := await next_message(conn)).get("id") != 2:
                pass
            assert reply["result"] is True

    asyncio.run(asyncio.wait_for(scenario(), 90))
