"""A real Alertmanager (Debian's) delivers to the monitor's receiver: the alert's firing
and resolution land on the ledger and a critical one opens an incident."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsledger.testing.anvil import free_port

pytestmark = pytest.mark.slow

OPSLEDGER = str(Path(sys.executable).with_name("opsledger"))
TOKEN = "am-test-token"


def request(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as response:
        text = response.read()
    return json.loads(text) if text else None


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def ledger_types(home: Path) -> list[str]:
    out = subprocess.run(
        [OPSLEDGER, "--home", str(home), "log", "--json", "--limit", "200"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line)["transaction"]["type"] for line in out.splitlines()]


def test_alerts_from_a_real_alertmanager_reach_the_ledger(tmp_path: Path) -> None:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "alertmanager not found: run `make setup` (Debian's prometheus-alertmanager)"
    home = tmp_path / "home"
    subprocess.run([OPSLEDGER, "--home", str(home), "init", "--admin", "alice"], check=True)
    port, am_port = free_port(), free_port()
    config = tmp_path / "monitor.yaml"
    config.write_text(
        f"""
monitor:
  listen: "127.0.0.1:{port}"
  interval: 1s
  evaluation_interval: 1s
  rules: {{defaults: false}}
  targets:
    - {{name: site, kind: command, command: "true"}}
"""
    )
    (tmp_path / "am.yml").write_text(
        f"""
route: {{receiver: opsledger, group_wait: 0s, group_interval: 1s, repeat_interval: 1h}}
receivers:
  - name: opsledger
    webhook_configs:
      - url: "http://127.0.0.1:{port}/api/v1/alertmanager"
        send_resolved: true
        http_config: {{authorization: {{credentials: "{TOKEN}"}}}}
"""
    )
    monitor = subprocess.Popen(
        [OPSLEDGER, "--home", str(home), "monitor", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OPSLEDGER_MONITOR_TOKEN": TOKEN},
    )
    manager = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    am = f"http://127.0.0.1:{am_port}/api/v2"
    try:
        wait_for(lambda: request(f"http://127.0.0.1:{port}/healthz"), 30, "the monitor")
        wait_for(lambda: request(f"{am}/status"), 30, "alertmanager")
        alert = {
            "labels": {"alertname": "DiskFull", "severity": "critical", "target": "site"},
            "annotations": {"summary": "disk full on site"},
        }
        request(f"{am}/alerts", [alert])
        wait_for(lambda: "incident.opened" in ledger_types(home), 60, "the incident on the ledger")
        ended = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        request(f"{am}/alerts", [{**alert, "endsAt": ended}])
        wait_for(lambda: "alert.resolved" in ledger_types(home), 60, "the resolution")
    finally:
        manager.terminate()
        manager.wait(timeout=30)
        monitor.send_signal(signal.SIGTERM)
        _, err = monitor.communicate(timeout=30)
    assert monitor.returncode == 0, err
    types = ledger_types(home)
    assert types.count("alert.fired") == 1  # Alertmanager's repeats are not new alerts
    incidents = subprocess.run(
        [OPSLEDGER, "--home", str(home), "incident", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (incident,) = json.loads(incidents.stdout)
    assert incident["title"] == "disk full on site"
