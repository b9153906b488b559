"""A real Prometheus (Debian's) scrapes the monitor's /metrics and loads its rules, and
headless Chromium renders the status page (a screenshot is kept as a test artifact)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsledger.testing.anvil import Anvil, free_port, running_anvil

OPSLEDGER = str(Path(sys.executable).with_name("opsledger"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what} ({last})")


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[str, Path, Anvil]]:
    """A monitor (the CLI, no home) watching one anvil node."""
    with running_anvil() as node:
        port = free_port()
        config = tmp_path / "monitor.yaml"
        config.write_text(
            f"""
monitor:
  listen: "127.0.0.1:{port}"
  interval: 200ms
  evaluation_interval: 200ms
  status: {{title: "Example Chain Status"}}
  targets:
    - {{name: rpc-mainnet, kind: evm, url: "{node.url}", chain: local}}
"""
        )
        process = subprocess.Popen(
            [OPSLEDGER, "--home", str(tmp_path / "none"), "monitor", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: get(f"{base}/healthz"), 30, "the monitor")
            yield base, config, node
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)


@pytest.mark.anvil
@pytest.mark.slow
def test_prometheus_scrapes_the_metrics_and_loads_the_rules(
    tmp_path: Path, monitor: tuple[str, Path, Anvil]
) -> None:
    base, config, node = monitor
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: run `make setup` (installs Debian's prometheus)"
    rules = tmp_path / "rules.yml"
    exported = subprocess.run(
        [OPSLEDGER, "monitor", "rules", "export", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    rules.write_text(exported.stdout)
    port = free_port()
    target = urllib.parse.urlsplit(base).netloc
    (tmp_path / "prometheus.yml").write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: opsledger-monitor
    static_configs: [{{targets: ["{target}"]}}]
"""
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        node.mine(3)
        query = urllib.parse.quote('opsledger_monitor_evm_head{target="rpc-mainnet"}')
        result = wait_for(
            lambda: get(f"{api}/query?query={query}")["data"]["result"], 60, "a scraped head"
        )
        assert float(result[0]["value"][1]) >= 3
        groups = get(f"{api}/rules")["data"]["groups"]
        names = {rule["name"] for group in groups for rule in group["rules"]}
        assert {"NodeHeadLag", "ChainHalted", "RPCLatencyHigh", "PeerCountLow"} <= names
        assert all(rule["health"] != "err" for group in groups for rule in group["rules"])
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.anvil
@pytest.mark.chromium
def test_the_status_page_renders_in_headless_chromium(
    tmp_path: Path, monitor: tuple[str, Path, Anvil]
) -> None:
    base, _, _ = monitor
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: run `make setup` (installs Debian's chromium)"
    wait_for(lambda: get(f"{base}/api/v1/status")["components"], 30, "a probed component")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1000,800",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", f"{base}/status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<h1>Example Chain Status</h1>" in dom
    assert 'data-component="rpc-mainnet" data-state="operational"' in dom
    assert "All systems operational" in dom
    assert dom.count('<div class="bar"') == 90  # 90 days of uptime bars, all up
    subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", f"{base}/status"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank image
