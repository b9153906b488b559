"""The peers under the benchmark: their installs and how each is run and read back.

Installs go under ``bench/results/peers/`` (git-ignored) and happen here, in the
benchmark's setup, never in ``make test``:

* ethereum-etl 2.4.2 (PyPI) in its own venv: it runs on Python 3.10 only (see
  docs/indexer-benchmark.md for why 3.11 fails), so a ``python3.10`` is looked for (PATH,
  then pyenv's versions); without one it is reported as not run, with the reason.
* Subsquid: npm ``@subsquid/evm-processor`` + ``@subsquid/evm-abi`` and ``subsquid/main.js``
  (an EvmBatchProcessor over plain RPC with an in-memory hot database).
* Ponder 0.16 (npm ``ponder``, ``viem``, ``hono``, ``typescript``) and the tiny project in
  ``ponder/`` (PGlite database, one table of transfers, GraphQL for reading back).

Every runner returns the rows it indexed as ``(block, log index, tx hash, address)``
so ``bench/indexer.py`` can check exactness against the node's own logs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address

from opsledger.testing.anvil import free_port

HERE = Path(__file__).resolve().parent
Row = tuple[int, int, str, str]
Log = Callable[[str], None]

ETL_VERSION = "2.4.2"
SUBSQUID_PACKAGES = ["@subsquid/evm-processor@1.27.3", "@subsquid/evm-abi@0.3.1"]
PONDER_PACKAGES = ["ponder@0.16.6", "viem@2", "hono@4", "typescript@5"]


class PeerUnavailable(Exception):
    """The peer cannot run here; the message says why (printed in the table)."""


@dataclass
class Peers:
    root: Path  # bench/results/peers

    # -- installs ------------------------------------------------------------------
    def _npm(self, folder: Path, packages: list[str], log: Log) -> None:
        stamp = folder / ".installed"
        wanted = " ".join(packages)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        folder.mkdir(parents=True, exist_ok=True)
        package = folder / "package.json"
        if not package.exists():
            package.write_text(json.dumps({"name": f"bench-{folder.name}", "private": True}))
        log(f"npm install {wanted} (into {folder}) ...")
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *packages],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise PeerUnavailable(f"npm install failed: {done.stderr.strip()[-300:]}")
        stamp.write_text(wanted)

    def setup_subsquid(self, log: Log) -> Path:
        folder = self.root / "subsquid"
        self._npm(folder, SUBSQUID_PACKAGES, log)
        shutil.copy(HERE / "subsquid" / "main.js", folder / "main.js")
        return folder

    def setup_ponder(self, log: Log) -> Path:
        folder = self.root / "ponder"
        package = folder / "package.json"
        if not package.exists():
            folder.mkdir(parents=True, exist_ok=True)
            package.write_text(
                json.dumps({"name": "bench-ponder", "private": True, "type": "module"})
            )
        self._npm(folder, PONDER_PACKAGES, log)
        shutil.copytree(HERE / "ponder", folder, dirs_exist_ok=True)
        return folder

    def setup_etl(self, log: Log) -> Path:
        venv = self.root / "etl-venv"
        tool = venv / "bin" / "ethereumetl"
        if tool.exists():
            return tool
        python = _python310()
        if python is None:
            raise PeerUnavailable(
                "ethereum-etl 2.4.2 needs Python 3.10 (on 3.11 its pinned parsimonious "
                "imports inspect.getargspec, removed in 3.11); no python3.10 found on PATH "
                "or under ~/.pyenv/versions"
            )
        log(f"creating {venv} with {python} and installing ethereum-etl=={ETL_VERSION} ...")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"ethereum-etl=={ETL_VERSION}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not tool.exists():
            shutil.rmtree(venv, ignore_errors=True)
            raise PeerUnavailable(f"pip install ethereum-etl failed: {done.stderr.strip()[-300:]}")
        return tool


def _python310() -> str | None:
    found = shutil.which("python3.10")
    if found:
        probe = subprocess.run([found, "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return found
    pyenv = Path.home() / ".pyenv" / "versions"
    for candidate in sorted(pyenv.glob("3.10.*/bin/python3.10"), reverse=True):
        return str(candidate)
    return None


# -- ethereum-etl ----------------------------------------------------------------------


def run_etl(
    tool: Path, rpc: str, nft: str, token: str, start: int, end: int, out: Path
) -> tuple[float, set[Row]]:
    """``ethereumetl export_token_transfers`` over the range (its defaults: 100-block
    filters, 5 workers); wall seconds and the exported rows."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(tool),
            "export_token_transfers",
            "-s",
            str(start),
            "-e",
            str(end),
            "-p",
            rpc,
            "-o",
            str(out),
            "-t",
            to_checksum_address(nft),
            "-t",
            to_checksum_address(token),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise PeerUnavailable(f"ethereumetl failed: {done.stderr.strip()[-300:]}")
    rows: set[Row] = set()
    with out.open() as handle:
        for item in csv.DictReader(handle):
            rows.add(
                (
                    int(item["block_number"]),
                    int(item["log_index"]),
                    item["transaction_hash"].lower(),
                    item["token_address"].lower(),
                )
            )
    return elapsed, rows


# -- Subsquid ----------------------------------------------------------------------------


def _sqd_env(rpc: str, nft: str, token: str, start: int, finality: int = 5) -> dict[str, str]:
    return {
        **os.environ,
        "RPC_URL": rpc,
        "START_BLOCK": str(start),
        "NFT": nft,
        "TOKEN": token,
        "FINALITY": str(finality),
        "POLL_MS": "100",
    }


def run_subsquid(
    folder: Path, rpc: str, nft: str, token: str, start: int, end: int, out: Path
) -> tuple[float, set[Row]]:
    """The processor from ``start`` to ``end`` (it exits once its handler saw ``end``)."""
    env = {**_sqd_env(rpc, nft, token, start), "END_BLOCK": str(end), "OUT_FILE": str(out)}
    started = time.perf_counter()
    done = subprocess.run(
        ["node", "main.js"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise PeerUnavailable(
            f"subsquid exited {done.returncode}: {done.stdout[-300:]}{done.stderr[-300:]}"
        )
    return elapsed, {
        (int(b), int(i), str(t).lower(), str(a).lower())
        for b, i, t, a in json.loads(out.read_text())
    }


class SubsquidFollower:
    """The processor following the head; rows read from its state endpoint."""

    def __init__(
        self,
        folder: Path,
        rpc: str,
        nft: str,
        token: str,
        start: int,
        log_file: Path,
        finality: int,
    ) -> None:
        self.port = free_port()
        env = {**_sqd_env(rpc, nft, token, start, finality), "STATE_PORT": str(self.port)}
        self.process = subprocess.Popen(
            ["node", "main.js"],
            cwd=folder,
            env=env,
            stdout=log_file.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def rows_above(self, block: int) -> set[Row] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/?from={block}", timeout=5
            ) as reply:
                data = json.loads(reply.read())
        except OSError:
            return None
        return {(int(b), int(i), str(t).lower(), str(a).lower()) for b, i, t, a in data["rows"]}

    def stop(self) -> None:
        _stop_group(self.process)


# -- Ponder -------------------------------------------------------------------------------

_PONDER_PAGE = """query($after: String, $above: BigInt) {
  transfers(limit: 1000, after: $after, where: {block_gt: $above}, orderBy: "id") {
    items { block logIndex txHash address }
    pageInfo { hasNextPage endCursor }
  }
}"""


class PonderRun:
    """``ponder start`` on a fresh PGlite directory (a cold run: no RPC cache)."""

    def __init__(
        self,
        folder: Path,
        rpc: str,
        nft: str,
        token: str,
        start: int,
        end: int | None,
        log_file: Path,
    ) -> None:
        shutil.rmtree(folder / ".ponder", ignore_errors=True)
        self.port = free_port()
        env = {
            **os.environ,
            "RPC_URL": rpc,
            "START_BLOCK": str(start),
            "NFT": nft,
            "TOKEN": token,
            "POLL_MS": "100",
            "PGLITE_DIR": str(folder / ".ponder" / "pglite"),
            "PONDER_TELEMETRY_DISABLED": "true",
            "CI": "true",
        }
        if end is not None:
            env["END_BLOCK"] = str(end)
        self.process = subprocess.Popen(
            [
                "node_modules/.bin/ponder",
                "start",
                "--schema",
                "bench",
                "--port",
                str(self.port),
                "-H",
                "127.0.0.1",
                "--log-format",
                "json",
            ],
            cwd=folder,
            env=env,
            stdout=log_file.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def rows_above(self, block: int) -> set[Row] | None:
        rows: set[Row] = set()
        after: str | None = None
        for _ in range(1000):
            query = {"query": _PONDER_PAGE, "variables": {"after": after, "above": str(block)}}
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/graphql",
                data=json.dumps(query).encode(),
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    data: dict[str, Any] = json.loads(reply.read())
            except OSError:
                return None
            if data.get("errors") or not data.get("data"):
                return None
            page = data["data"]["transfers"]
            rows |= {
                (int(r["block"]), int(r["logIndex"]), r["txHash"].lower(), r["address"].lower())
                for r in page["items"]
            }
            if not page["pageInfo"]["hasNextPage"]:
                return rows
            after = page["pageInfo"]["endCursor"]
        return rows

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        _stop_group(self.process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
