"""opsledger under the benchmark: ``opsledger index --config ... --once`` as a subprocess,
and the same indexer following live while the chain reorganises.

The config is the issue's smallest one with both contracts; the RPC URL is the counting
proxy's. Exactness is checked against the node's own logs (``truth``): every
(block, log index, tx hash) of both contracts, nothing more, nothing less.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OPSLEDGER = [str(Path(sys.executable).parent / "opsledger")]
# Where the CLI's compiled modules are cached (``bench/indexer.py`` sets it; None: leave
# the caller's environment alone). An installed opsledger has its bytecode (pip compiles
# at install time); an editable checkout run with PYTHONDONTWRITEBYTECODE=1 (as on these
# machines) would recompile every opsledger module at each start instead, ~0.1 s.
PYCACHE: Path | None = None


def cli_env() -> dict[str, str]:
    """The environment of every ``opsledger`` process the benchmark starts."""
    env = {**os.environ, "COLUMNS": "120"}
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def warm_up() -> None:
    """Load (and so compile and cache) every module ``opsledger index`` needs, untimed."""
    subprocess.run(
        [*OPSLEDGER, "index", "--help"], capture_output=True, check=False, cwd=ROOT, env=cli_env()
    )


def write_config(
    folder: Path,
    rpc: str,
    nft: str,
    token: str,
    start_block: int,
    poll: float = 0.1,
    finality: int = 5,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "indexer": {
            "database": f"sqlite:///{folder / 'index.db'}",
            "poll_interval": poll,
            "chains": [
                {
                    "name": "local",
                    "rpc": rpc,
                    "finality_depth": finality,
                    "contracts": [
                        {
                            "name": "nft",
                            "address": nft,
                            "abi": "erc721",
                            "start_block": start_block,
                        },
                        {
                            "name": "token",
                            "address": token,
                            "abi": "erc20",
                            "start_block": start_block,
                        },
                    ],
                }
            ],
        }
    }
    path = folder / "indexer.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def command(config: Path, *extra: str) -> list[str]:
    return [*OPSLEDGER, "index", "--config", str(config), *extra]


def run_once(config: Path, timeout: float = 600) -> tuple[float, str]:
    """Wall seconds of ``opsledger index --once`` (process start to exit) and its stderr."""
    started = time.perf_counter()
    done = subprocess.run(
        command(config, "--once"),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=cli_env(),
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"opsledger index exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, done.stderr


def follow(config: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """``opsledger index`` following the head (stop with ``stop``)."""
    handle = log_file.open("wb")
    return subprocess.Popen(
        command(config),
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=cli_env(),
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def indexed_rows(config: Path) -> set[tuple[int, int, str, str]]:
    """(block, log index, tx hash, contract) of every event row, read straight from SQLite."""
    database = yaml.safe_load(config.read_text())["indexer"]["database"][len("sqlite:///") :]
    if not Path(database).exists():
        return set()
    rows: set[tuple[int, int, str, str]] = set()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as conn:
        for table in ("nft_transfer", "token_transfer", "nft_approval", "token_approval"):
            try:
                found = conn.execute(
                    f'SELECT block_number, log_index, tx_hash, address FROM "{table}"'
                ).fetchall()
            except sqlite3.OperationalError:
                continue
            rows |= {(int(b), int(i), str(t).lower(), str(a).lower()) for b, i, t, a in found}
    return rows


def rpc_calls_reported(stderr: str) -> int | None:
    """The RPC call count opsledger prints itself ("local: 123 RPC calls, ...")."""
    for line in stderr.splitlines():
        if "RPC calls" in line:
            words = line.replace(",", " ").split()
            try:
                return int(words[words.index("RPC") - 1])
            except (ValueError, IndexError):
                return None
    return None
