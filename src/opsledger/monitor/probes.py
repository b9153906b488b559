"""Probes: one look at a target, turned into samples in the ``SeriesStore``.

Each probe returns a ``ProbeResult`` (up or not, and named values); ``record_result``
writes it as the metrics the default rules read. EVM nodes are asked in ONE JSON-RPC
batch (``eth_blockNumber``, ``eth_syncing``, ``net_peerCount``, ``eth_chainId``) so the
latency measured is one round trip, as a client would see it. Head lag is not a probe's
business: it needs every node of a chain, so ``ChainView`` computes it after each probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from opsledger.monitor.config import DEV_CHAIN_IDS, Target
from opsledger.monitor.series import SeriesStore

__all__ = ["METRICS", "ChainView", "ProbeResult", "describe_metrics", "probe", "record_result"]

METRICS: dict[str, tuple[str, str]] = {
    "opsledger_monitor_probe_up": ("gauge", "1 when the target's last probe succeeded"),
    "opsledger_monitor_probes_total": ("counter", "Probes run"),
    "opsledger_monitor_probe_errors_total": ("counter", "Probes that failed"),
    "opsledger_monitor_probe_duration_seconds": ("gauge", "Duration of the last probe"),
    "opsledger_monitor_rpc_latency_seconds": ("histogram", "JSON-RPC round trip of EVM probes"),
    "opsledger_monitor_evm_head": ("gauge", "Latest block number the node reports"),
    "opsledger_monitor_evm_head_lag_blocks": ("gauge", "Blocks behind the best node of its chain"),
    "opsledger_monitor_evm_head_age_seconds": ("gauge", "Seconds since the node's head advanced"),
    "opsledger_monitor_evm_peers": ("gauge", "net_peerCount"),
    "opsledger_monitor_evm_min_peers": ("gauge", "Peers the node should have (config)"),
    "opsledger_monitor_evm_syncing": ("gauge", "1 while eth_syncing reports progress"),
    "opsledger_monitor_evm_chain_id": ("gauge", "eth_chainId"),
    "opsledger_monitor_http_status": ("gauge", "HTTP status of the last probe"),
    "opsledger_monitor_tls_expiry_seconds": ("gauge", "Seconds until the certificate expires"),
    "opsledger_monitor_indexer_lag_blocks": ("gauge", "Blocks the indexer is behind its chain"),
}


def describe_metrics(store: SeriesStore) -> None:
    for name, (kind, help_text) in METRICS.items():
        store.describe(name, kind, help_text)  # type: ignore[arg-type]


@dataclass
class ProbeResult:
    target: Target
    up: bool
    duration: float
    values: dict[str, float] = field(default_factory=dict)
    error: str = ""


async def probe(target: Target, session: aiohttp.ClientSession) -> ProbeResult:
    """Run the target's probe once; never raises for a failing target."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(target.timeout):
            if target.kind == "evm":
                values = await _evm(target, session)
            elif target.kind == "http":
                values = await _http(target, session)
            elif target.kind == "tls":
                values = await _tls(target)
            elif target.kind == "indexer":
                values = await _indexer(target, session)
            else:
                values = await _command(target)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
        message = str(exc) or type(exc).__name__
        return ProbeResult(target, False, time.monotonic() - started, error=message)
    up = values.pop("up", 1.0) == 1.0
    return ProbeResult(target, up, time.monotonic() - started, values)


async def _evm(target: Target, session: aiohttp.ClientSession) -> dict[str, float]:
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": method, "params": []}
        for i, method in enumerate(
            ("eth_blockNumber", "eth_syncing", "net_peerCount", "eth_chainId")
        )
    ]
    started = time.monotonic()
    async with session.post(target.url, json=batch) as response:
        response.raise_for_status()
        replies = await response.json(content_type=None)
    latency = time.monotonic() - started
    if not isinstance(replies, list):
        raise ValueError("the node did not answer the batch with a list")
    by_id = {r.get("id"): r for r in replies if isinstance(r, Mapping)}
    if "result" not in by_id.get(0, {}):
        raise ValueError(f"eth_blockNumber failed: {by_id.get(0, {}).get('error')}")
    head = int(by_id[0]["result"], 16)
    syncing = by_id.get(1, {}).get("result")
    peers_raw = by_id.get(2, {}).get("result")
    chain_raw = by_id.get(3, {}).get("result")
    chain_id = int(chain_raw, 16) if isinstance(chain_raw, str) else -1
    values = {
        "latency": latency,
        "head": float(head),
        "syncing": 0.0 if syncing in (False, None) else 1.0,
        "chain_id": float(chain_id),
    }
    if isinstance(peers_raw, str):
        values["peers"] = float(int(peers_raw, 16))
    default_min = 0 if chain_id in DEV_CHAIN_IDS else 10
    values["min_peers"] = float(target.min_peers if target.min_peers is not None else default_min)
    return values


async def _http(target: Target, session: aiohttp.ClientSession) -> dict[str, float]:
    async with session.get(target.url, allow_redirects=False) as response:
        body = await response.text(errors="replace")
        status = response.status
    up = status == target.expect_status
    if up and target.body_match is not None:
        up = re.search(target.body_match, body) is not None
    return {"status": float(status), "up": 1.0 if up else 0.0}


async def _tls(target: Target) -> dict[str, float]:
    parts = urlsplit(target.url)
    context = ssl.create_default_context()
    _, writer = await asyncio.open_connection(
        parts.hostname, parts.port or 443, ssl=context, server_hostname=parts.hostname
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object else None
    finally:
        writer.close()
    if not cert or "notAfter" not in cert:
        raise ValueError("no certificate")
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), UTC)
    return {"tls_expiry": (expires - datetime.now(UTC)).total_seconds()}


async def _indexer(target: Target, session: aiohttp.ClientSession) -> dict[str, float]:
    async with session.get(target.url) as response:
        response.raise_for_status()
        text = await response.text()
    lag = max(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == target.metric
        ),
        default=None,
    )
    if lag is None:
        raise ValueError(f"metric {target.metric} not found at {target.url}")
    return {"indexer_lag": float(lag)}


async def _command(target: Target) -> dict[str, float]:
    assert target.command is not None  # checked by the config
    process = await asyncio.create_subprocess_shell(
        target.command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = await process.wait()
    except asyncio.CancelledError:
        # a timeout: kill the whole session, not just the shell, or its children linger
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return {"up": 1.0 if code == 0 else 0.0, "exit_code": float(code)}


@dataclass
class _Head:
    number: float
    changed_at: float


class ChainView:
    """The best head of each chain, and how long each node's head has stood still."""

    def __init__(self) -> None:
        self.heads: dict[str, dict[str, _Head]] = {}

    def update(self, target: Target, head: float, at: float) -> None:
        nodes = self.heads.setdefault(target.chain, {})
        previous = nodes.get(target.name)
        if previous is None or head != previous.number:
            nodes[target.name] = _Head(head, at)

    def best(self, chain: str) -> float:
        return max((h.number for h in self.heads.get(chain, {}).values()), default=0.0)


def record_result(store: SeriesStore, chains: ChainView, result: ProbeResult, at: float) -> None:
    target = result.target
    labels = {"target": target.name, "kind": target.kind}
    store.set("opsledger_monitor_probe_up", labels, 1.0 if result.up else 0.0, at)
    store.inc("opsledger_monitor_probes_total", labels, at)
    store.inc("opsledger_monitor_probe_errors_total", labels, at, 0.0 if result.up else 1.0)
    store.set("opsledger_monitor_probe_duration_seconds", labels, result.duration, at)
    values = result.values
    if target.kind == "evm" and "head" in values:
        evm = {"target": target.name, "chain": target.chain}
        store.observe("opsledger_monitor_rpc_latency_seconds", evm, values["latency"], at)
        chains.update(target, values["head"], at)
        store.set("opsledger_monitor_evm_head", evm, values["head"], at)
        store.set("opsledger_monitor_evm_syncing", evm, values["syncing"], at)
        store.set("opsledger_monitor_evm_chain_id", evm, values["chain_id"], at)
        store.set("opsledger_monitor_evm_min_peers", evm, values["min_peers"], at)
        if "peers" in values:
            store.set("opsledger_monitor_evm_peers", evm, values["peers"], at)
    if target.kind == "evm":
        _refresh_chain(store, chains, target.chain, at)
    if "status" in values:
        store.set("opsledger_monitor_http_status", {"target": target.name}, values["status"], at)
    if "tls_expiry" in values:
        store.set(
            "opsledger_monitor_tls_expiry_seconds",
            {"target": target.name},
            values["tls_expiry"],
            at,
        )
    if "indexer_lag" in values:
        store.set(
            "opsledger_monitor_indexer_lag_blocks",
            {"target": target.name},
            values["indexer_lag"],
            at,
        )


def _refresh_chain(store: SeriesStore, chains: ChainView, chain: str, at: float) -> None:
    best = chains.best(chain)
    for name, head in chains.heads.get(chain, {}).items():
        labels = {"target": name, "chain": chain}
        store.set("opsledger_monitor_evm_head_lag_blocks", labels, best - head.number, at)
        store.set("opsledger_monitor_evm_head_age_seconds", labels, at - head.changed_at, at)
