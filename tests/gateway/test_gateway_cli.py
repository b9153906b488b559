"""``opsledger gateway``: the smallest config as written, config errors, ledger records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.cli.main import app
from opsledger.gateway.ratelimit import hash_key
from opsledger.testing.anvil import Anvil, free_port
from tests.gateway._support import GENESIS_ARGS

SMALLEST = """\
gateway:
  listen: "127.0.0.1:{port}"
  chains:
    - name: local
      chain_id: 31337
      finality_depth: 2
      upstreams:
        - {{name: a, url: "http://127.0.0.1:{a}"}}
        - {{name: b, url: "http://127.0.0.1:{b}"}}
"""


def _post(url: str, payload: object) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        reply: dict[str, object] = json.loads(response.read())
        return reply


@pytest.mark.anvil
def test_smallest_config_serves_and_records_on_the_ledger(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(admin="alice")
    a = Anvil.start(extra_args=GENESIS_ARGS)
    b = Anvil.start(extra_args=GENESIS_ARGS)
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(SMALLEST.format(port=port, a=a.port, b=b.port))
    opsledger = str(Path(sys.executable).with_name("opsledger"))
    log = tmp_path / "gateway.log"
    log_file = log.open("wb")
    process = subprocess.Popen(
        [opsledger, "--home", str(home.path), "gateway", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        env={k: v for k, v in os.environ.items() if k != "OPSLEDGER_HOME"},
    )
    url = f"http://127.0.0.1:{port}/rpc/local"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = _post(url, {"jsonrpc": "2.0", "id": 7, "method": "eth_chainId"})
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        assert reply == {"jsonrpc": "2.0", "id": 7, "result": "0x7a69"}
        b.kill()  # an upstream state change to record
        metrics = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 20
        while 'gateway_upstream_in_rotation{chain="local",upstream="b"} 0.0' not in (
            urllib.request.urlopen(metrics, timeout=5).read().decode()
        ):
            assert time.monotonic() < deadline, "b never left rotation"
            time.sleep(0.1)
        assert _post(url, {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})["result"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log_file.close()
        a.stop()
        b.stop()
    client = home.client()
    try:
        rows = client.list_transactions({"type": "gateway.*", "limit": 100})
    finally:
        client.close()
    types = [row["transaction"]["type"] for row in rows]
    assert "gateway.config_loaded" in types
    loaded = next(r for r in rows if r["transaction"]["type"] == "gateway.config_loaded")
    assert loaded["transaction"]["body"]["chains"] == ["local"]
    assert loaded["transaction"]["actor"] == home.config().node
    states = [r["transaction"]["body"] for r in rows if r["transaction"]["type"].endswith("_state")]
    assert {(s["upstream"], s["state"]) for s in states} >= {("a", "healthy"), ("b", "healthy")}
    # URLs never reach the ledger (they may carry provider keys).
    recorded = json.dumps([r["transaction"]["body"] for r in rows])
    assert a.url not in recorded
    assert b.url not in recorded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gateway:\n  chains: []\n", "gateway.chains: must list at least one chain"),
        (
            "gateway:\n  chains:\n    - {name: x, chain_id: 1, upstreams: [{name: a}]}\n",
            "gateway.yaml:3: gateway.chains[0].upstreams[0].url: is required",
        ),
        (
            "gateway:\n  lisen: 1\n  chains:\n    - {name: x, chain_id: 1,"
            " upstreams: [{name: a, url: 'http://h'}]}\n",
            "gateway.yaml:2: gateway.lisen: unknown key",
        ),
        (
            "gateway:\n  chains:\n    - {name: x, chain_id: one,"
            " upstreams: [{name: a, url: 'http://h'}]}\n",
            "gateway.chains[0].chain_id: must be an integer",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["gateway", "--config", str(config), "--check"])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_check_accepts_the_smallest_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(SMALLEST.format(port=8545, a=9001, b=9002))
    result = CliRunner().invoke(app, ["gateway", "--config", str(config), "--check"])
    assert result.exit_code == 0, result.output
    assert "config ok: sha256:" in result.output


def test_keys_hash_prints_the_stored_form() -> None:
    result = CliRunner().invoke(app, ["gateway", "keys", "hash", "s3cret"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == hash_key("s3cret")


def test_keys_add_then_list(tmp_path: Path) -> None:
    added = CliRunner().invoke(app, ["gateway", "keys", "add", "alice", "--tier", "pro"])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[0]
    assert f'hash: "{hash_key(key)}"' in " ".join(added.output.split())
    config = tmp_path / "gateway.yaml"
    config.write_text(
        SMALLEST.format(port=8545, a=9001, b=9002)
        + "  rate_limits:\n    tiers: {pro: {rps: 50, burst: 100}}\n"
        + f'    keys: [{{name: alice, tier: pro, hash: "{hash_key(key)}"}}]\n'
    )
    listed = CliRunner().invoke(app, ["gateway", "keys", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.output
    assert "pro" in listed.output
    assert key not in listed.output
