"""Ingest over HTTP: the real server in a subprocess (``opsledger.api.server.serve`` on a
free 127.0.0.1 port), fed pre-signed transactions with httpx."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchkit import run_threads, timed, tree_cpu_seconds
from ingest import fresh_home, partition, registrations
from opsledger.app import Home

_SERVER = (
    "import sys; from pathlib import Path; from opsledger.app import Home; "
    "from opsledger.api.server import serve; serve(Home(Path(sys.argv[1])), '127.0.0.1:0')"
)
BATCH_PATHS = ("/api/v1/transactions:batch", "/api/v1/transactions/batch")


@contextlib.contextmanager
def running_server(home: Home, log: Path) -> Iterator[tuple[str, int]]:
    """Start ``serve`` for ``home`` in a subprocess; yield its URL once it accepts
    connections (it writes ``serve.json`` then) and its pid; SIGTERM afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(home.path)],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 60
            url: str | None = None
            while url is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()}")
                if home.serve_path.exists():
                    with contextlib.suppress(ValueError, OSError, KeyError):
                        url = str(json.loads(home.serve_path.read_text())["url"])
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start within 60 s")
                time.sleep(0.05)
            yield url, proc.pid
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def batch_path(client: httpx.Client) -> str:
    """The batch route this build has (the issue names two spellings)."""
    spec = client.get("/openapi.json").raise_for_status().json()
    for path in BATCH_PATHS:
        if path in spec.get("paths", {}):
            return path
    raise RuntimeError(f"no batch endpoint among {BATCH_PATHS} in /openapi.json")


def _post_batch(client: httpx.Client, path: str, leaves: Sequence[bytes]) -> None:
    body = b"[" + b",".join(leaves) + b"]"
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    response.raise_for_status()
    results = response.json()["results"]
    errors = [r for r in results if "error" in r]
    if errors or len(results) != len(leaves):
        raise RuntimeError(f"batch refused {len(errors)} of {len(leaves)}: {errors[:1]}")


@dataclass
class HttpResult:
    batch_txs: int
    batch_seconds: float
    batch_server_cpu: float
    single_txs: int
    single_seconds: float
    single_server_cpu: float
    batch_path: str

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "batch_tx_per_s": self.batch_txs / self.batch_seconds,
            "single_tx_per_s": self.single_txs / self.single_seconds,
        }


def http_ingest(
    root: Path,
    leaves: Sequence[bytes],
    *,
    batch_txs: int,
    batch_chunk: int,
    threads: int,
    per_thread: int,
) -> HttpResult:
    """Batches of ``batch_chunk`` for the first ``batch_txs`` leaves, then single POSTs
    from ``threads`` threads over later leaves (nonces keep rising per actor)."""
    home = fresh_home(root, "http")
    regs = [stx.leaf for stx in registrations(home)]
    with running_server(home, root / "http-server.log") as (url, pid):
        with httpx.Client(base_url=url, timeout=300) as client:
            path = batch_path(client)
            _post_batch(client, path, regs)
            batch = leaves[:batch_txs]

            def post_batches() -> None:
                for lo in range(0, len(batch), batch_chunk):
                    _post_batch(client, path, batch[lo : lo + batch_chunk])

            cpu = tree_cpu_seconds(pid)
            batch_seconds = timed(post_batches)
            batch_cpu = tree_cpu_seconds(pid) - cpu

        later = range(batch_txs, len(leaves))
        parts = [p[:per_thread] for p in partition(later, threads)]

        def feed(positions: Sequence[int]) -> Callable[[], None]:
            def run() -> None:
                with httpx.Client(base_url=url, timeout=60) as client:
                    for i in positions:
                        client.post(
                            "/api/v1/transactions",
                            content=leaves[i],
                            headers={"content-type": "application/json"},
                        ).raise_for_status()

            return run

        cpu = tree_cpu_seconds(pid)
        single_seconds = run_threads([feed(p) for p in parts])
        single_cpu = tree_cpu_seconds(pid) - cpu
    return HttpResult(
        len(batch), batch_seconds, batch_cpu, sum(map(len, parts)), single_seconds, single_cpu, path
    )
