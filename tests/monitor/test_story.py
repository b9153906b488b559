"""The issue's story with real anvil nodes: one node stops mining, the lag alert fires
after its ``for``, an incident opens, a webhook hears it, mining resumes, the alert
resolves, the incident is resolved and its postmortem drafted: all on the ledger."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsledger.testing.anvil import Anvil, free_port, running_anvil
from opsledger.testing.webhook import webhook_receiver

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

OPSLEDGER = [str(Path(sys.executable).with_name("opsledger"))]


def opsledger(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPSLEDGER, "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Miner:
    """Mines one block on each running node every 100 ms, like a live network."""

    def __init__(self, nodes: dict[str, Anvil]) -> None:
        self.nodes = nodes
        self.paused: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, node in self.nodes.items():
                if name not in self.paused:
                    node.mine(1)

    def __enter__(self) -> Miner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def nodes() -> Iterator[dict[str, Anvil]]:
    with running_anvil() as a, running_anvil() as b:
        yield {"node-a": a, "node-b": b}


def wait_until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def test_lag_alert_opens_an_incident_that_is_resolved_and_reviewed(
    tmp_path: Path, nodes: dict[str, Anvil]
) -> None:
    home = tmp_path / "home"
    assert opsledger(home, "init", "--admin", "alice").returncode == 0
    port = free_port()
    with webhook_receiver() as hook, Miner(nodes) as miner:
        config = tmp_path / "monitor.yaml"
        # the smallest config, with time settings shortened for a test
        config.write_text(
            f"""
monitor:
  listen: "127.0.0.1:{port}"
  interval: 200ms
  evaluation_interval: 200ms
  rules:
    overrides:
      NodeHeadLag: {{for: 1s}}
  targets:
    - {{name: node-a, kind: evm, url: "{nodes["node-a"].url}", chain: local}}
    - {{name: node-b, kind: evm, url: "{nodes["node-b"].url}", chain: local}}
  notify:
    - {{kind: webhook, url: "{hook.url}"}}
"""
        )
        monitor = subprocess.Popen(
            [*OPSLEDGER, "--home", str(home), "monitor", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _alive(base), what="the monitor to listen")
            status = get_json(f"{base}/api/v1/status")
            assert {c["name"]: c["state"] for c in status["components"]} == {
                "node-a": "operational",
                "node-b": "operational",
            }
            # node-a stops mining: it falls behind node-b
            miner.paused.add("node-a")
            fired = hook.wait_for(
                lambda p: p["event"] == "alert.firing" and p["fields"].get("target") == "node-a"
            )
            assert fired["fields"]["alertname"] == "NodeHeadLag"
            assert fired["severity"] == "critical"
            incidents = wait_until(
                lambda: json.loads(opsledger(home, "incident", "list", "--json").stdout or "[]"),
                what="the incident on the ledger",
            )
            (incident,) = incidents
            assert incident["state"] == "open"
            assert "node-a" in incident["title"]
            status = get_json(f"{base}/api/v1/status")
            states = {c["name"]: c["state"] for c in status["components"]}
            assert states["node-a"] == "major_outage"
            assert states["node-b"] == "operational"
            page = urllib.request.urlopen(f"{base}/status", timeout=5).read().decode()
            assert 'data-component="node-a" data-state="major_outage"' in page
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
            assert 'opsledger_monitor_evm_head_lag_blocks{chain="local",target="node-a"}' in metrics
            # node-a catches up and mines again: the alert resolves
            gap = nodes["node-b"].block_number() - nodes["node-a"].block_number()
            nodes["node-a"].mine(gap + 1)
            miner.paused.discard("node-a")
            hook.wait_for(
                lambda p: p["event"] == "alert.resolved" and p["fields"].get("target") == "node-a"
            )
        finally:
            monitor.send_signal(signal.SIGTERM)
            _, err = monitor.communicate(timeout=30)
        assert monitor.returncode == 0, err
    incident_id = incident["id"]
    ack = opsledger(home, "incident", "ack", incident_id, "--owner", "carol", "--for", "30")
    assert ack.returncode == 0, ack.stderr
    resolved = opsledger(home, "incident", "resolve", incident_id, "--summary", "node-a resynced")
    assert resolved.returncode == 0, resolved.stderr
    report = tmp_path / "pm.md"
    written = opsledger(home, "incident", "postmortem", incident_id, "--out", str(report))
    assert written.returncode == 0, written.stderr
    markdown = report.read_text()
    assert f"# Postmortem: {incident['title']}" in markdown
    assert "fired NodeHeadLag" in markdown
    assert "resolved NodeHeadLag" in markdown
    shown = json.loads(opsledger(home, "incident", "show", incident_id, "--json").stdout)
    assert shown["state"] == "resolved"
    assert shown["owner"] == "carol"
    assert shown["postmortem"] is not None
    kinds = [e["type"] for e in shown["timeline"]]
    for kind in ("alert.fired", "incident.opened", "alert.resolved", "incident.resolved"):
        assert kind in kinds
    verified = opsledger(home, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _alive(base: str) -> bool:
    try:
        return bool(get_json(f"{base}/healthz"))
    except OSError:
        return False
