"""The command line against anvil: `index --once`, SIGKILL during backfill and resume,
`index status`, and reorgs recorded on a real ledger home."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.cli import app
from opsledger.indexer.storage import Store
from opsledger.testing.anvil import free_port
from tests.indexer.chainkit import (
    Chain,
    NftState,
    assert_exact,
    nft_mint,
    truth_transfers,
    wait_until,
)

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

OPSLEDGER = [str(Path(sys.executable).parent / "opsledger")]


def smallest_config(path: Path, rpc: str, nft: str, **chain: object) -> Path:
    extra = "".join(f"      {k}: {v}\n" for k, v in chain.items())
    path.write_text(
        "indexer:\n"
        '  database: "sqlite:///index.db"\n'
        "  chains:\n"
        "    - name: local\n"
        f'      rpc: "{rpc}"\n'
        "      finality_depth: 5\n"
        f"{extra}"
        "      contracts:\n"
        f'        - {{name: nft, address: "{nft}", abi: erc721, start_block: 0}}\n'
    )
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPSLEDGER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")},
    )


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def _post(url: str, body: bytes) -> dict[str, object]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def height(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT height FROM _indexer_chains WHERE chain='local'").fetchone()
    except sqlite3.OperationalError:
        return -1
    return int(row[0]) if row else -1


def test_sigkill_during_backfill_then_resume(chain: Chain, tmp_path: Path) -> None:
    nft = NftState(chain.deploy("nft"))
    for i in range(40):
        nft_mint(chain, nft, chain.accounts[i % 10], 25)
        chain.node.mine(5)
    config = smallest_config(
        tmp_path / "indexer.yaml",
        chain.node.url,
        nft.address,
        initial_range=1,
        max_range=1,
        concurrency=2,
    )
    db = tmp_path / "index.db"
    log = tmp_path / "index.log"
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [*OPSLEDGER, "index", "--config", str(config), "--once"],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
    try:
        wait_until(lambda: height(db) > 40 or process.poll() is not None, 60, "backfill progress")
        assert process.poll() is None, log.read_text()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    killed_at = height(db)
    assert 0 < killed_at < chain.head()
    done = cli("index", "--config", str(config), "--once")
    assert done.returncode == 0, done.stderr
    store = Store.open(f"sqlite:///{db}")
    assert_exact(chain, store, nft.address, None, depth=5)
    assert (
        store.count("nft_transfer")
        == len(truth_transfers(chain, nft.address, "local", False))
        == 1000
    )

    status = cli("index", "status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    (line,) = [json.loads(x) for x in status.stdout.splitlines()]
    assert line["chain"] == "local" and line["height"] == line["head"] == chain.head()
    assert line["lag"] == 0 and line["events"] == 1000 and line["head_live"] is True
    assert line["events_per_second"] > 0

    # the query API over the same index: REST and GraphQL agree with the table
    port = free_port()
    server = subprocess.Popen(
        [*OPSLEDGER, "index", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        url = f"{base}/api/v1/tables/nft_transfer?limit=5"
        wait_until(lambda: _get(url) is not None, 60, "the index API")
        page = _get(url)
        assert page is not None
        assert len(page["rows"]) == 5  # type: ignore[arg-type]
        assert page["next"]
        query = b'{"query": "{ nft_transfer(limit: 3) { rows { token_id } next } }"}'
        answer = _post(f"{base}/graphql", query)
        assert len(answer["data"]["nft_transfer"]["rows"]) == 3  # type: ignore[index]
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err


def test_cli_records_reorgs_on_the_home_ledger(chain: Chain, tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.init(admin="alice")
    nft = NftState(chain.deploy("nft"))
    nft_mint(chain, nft, chain.accounts[1], 10)
    chain.node.mine(3)
    config = smallest_config(tmp_path / "indexer.yaml", chain.node.url, nft.address)
    runner = CliRunner()
    first = runner.invoke(
        app, ["--home", str(home.path), "index", "--config", str(config), "--once"]
    )
    assert first.exit_code == 0, first.output
    chain.node.rpc("anvil_reorg", [3, []])
    second = runner.invoke(
        app, ["--home", str(home.path), "index", "--config", str(config), "--once"]
    )
    assert second.exit_code == 0, second.output
    store = Store.open(f"sqlite:///{tmp_path / 'index.db'}")
    assert_exact(chain, store, nft.address, None, depth=5)
    client = home.client()
    try:
        reorgs = client.list_transactions({"type": "indexer.reorg"})
        started = client.list_transactions({"type": "indexer.started"})
    finally:
        client.close()
    assert len(started) == 2
    (reorg,) = reorgs
    body = reorg["transaction"]["body"]
    assert body["chain"] == "local" and body["depth"] == 3 and len(body["replaced"]) == 3
    assert reorg["transaction"]["actor"] == home.config().node
    assert started[0]["transaction"]["body"]["config_digest"].startswith("sha256:")


def test_bad_config_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "indexer.yaml"
    path.write_text("indexer:\n  database: nope\n")
    result = cli("index", "--config", str(path), "--once")
    assert result.returncode == 2
    assert "indexer.database" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_node_is_one_line(tmp_path: Path) -> None:
    from opsledger.testing.anvil import free_port

    config = smallest_config(
        tmp_path / "indexer.yaml", f"http://127.0.0.1:{free_port()}", "0x" + "1" * 40, timeout=1
    )
    result = cli("index", "--config", str(config), "--once")
    assert result.returncode == 1, result.stderr
    assert "chain local" in result.stderr and "Traceback" not in result.stderr


# Start-up: ``opsledger index --once`` without a home neither converts its options through
# pydantic nor loads signing code (tests/cli/test_startup_coercion.py has the details).
NOT_NEEDED = ("pydantic", "nacl", "cryptography", "opsledger.core.crypto", "opsledger.core.tx")

ONCE_PROBE = """
import json, sys
from opsledger.cli.main import app
try:
    app(["index", "--config", {config!r}, "--once"], prog_name="opsledger")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(json.dumps([name for name in {names!r} if name in sys.modules]))
"""


def test_index_once_loads_neither_pydantic_nor_signing(chain: Chain, tmp_path: Path) -> None:
    nft = NftState(chain.deploy("nft"))
    nft_mint(chain, nft, chain.accounts[1], 10)
    chain.node.mine(3)
    config = smallest_config(tmp_path / "indexer.yaml", chain.node.url, nft.address)
    done = subprocess.run(
        [sys.executable, "-c", ONCE_PROBE.format(config=str(config), names=NOT_NEEDED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_")},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    store = Store.open(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        assert_exact(chain, store, nft.address, None, depth=5)
        assert store.count("nft_transfer") == 10
    finally:
        store.close()
