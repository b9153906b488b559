"""Scheduled maintenance: recorded on the ledger, listed, and shown on the status page."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.app.monitor import _LedgerStatus
from opsledger.cli import app
from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.service import MonitorService, build_rules
from opsledger.monitor.web import render_status_page

CONFIG = {
    "targets": [
        {"name": "rpc-a", "kind": "http", "url": "http://127.0.0.1:1/", "component": "rpc"},
        {"name": "explorer", "kind": "http", "url": "http://127.0.0.1:2/"},
    ]
}


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_maintenance_windows_reach_the_status_page(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init(admin="alice")
    runner = CliRunner()
    now = datetime.now(UTC)

    def cli(*args: str) -> str:
        result = runner.invoke(app, ["--home", str(home.path), *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    now_window = cli(
        "monitor",
        "maintenance",
        "add",
        "-c",
        "rpc",
        "--title",
        "Node upgrade",
        "--start",
        stamp(now - timedelta(minutes=5)),
        "--end",
        stamp(now + timedelta(hours=1)),
    ).split()[0]
    later = cli(
        "monitor",
        "maintenance",
        "add",
        "-c",
        "explorer",
        "--title",
        "Database move",
        "--start",
        stamp(now + timedelta(days=1)),
        "--end",
        stamp(now + timedelta(days=1, hours=2)),
    ).split()[0]
    bad = runner.invoke(
        app,
        [
            "--home",
            str(home.path),
            "monitor",
            "maintenance",
            "add",
            "-c",
            "rpc",
            "--title",
            "x",
            "--start",
            stamp(now),
            "--end",
            stamp(now - timedelta(hours=1)),
        ],
    )
    assert bad.exit_code == 2 and "ends after it starts" in bad.output
    listed = [
        json.loads(line) for line in cli("monitor", "maintenance", "list", "--json").splitlines()
    ]
    assert [w["id"] for w in listed] == [now_window, later]

    config = parse_monitor_config(CONFIG)
    service = MonitorService(config, rules=build_rules(config))
    doc = _LedgerStatus(service, home)()
    assert {c["name"]: c["state"] for c in doc["components"]} == {
        "rpc": "maintenance",
        "explorer": "operational",
    }
    assert doc["status"] == "maintenance"
    assert [(w["id"], w["state"]) for w in doc["maintenance"]] == [
        (now_window, "in_progress"),
        (later, "scheduled"),
    ]
    page = render_status_page(doc)
    assert "Scheduled maintenance" in page and "Database move" in page
    assert 'data-component="rpc" data-state="maintenance"' in page

    # cancelling the window puts the component back in service
    cli(
        "monitor",
        "maintenance",
        "add",
        "-c",
        "rpc",
        "--title",
        "Node upgrade",
        "--start",
        stamp(now - timedelta(minutes=5)),
        "--end",
        stamp(now + timedelta(hours=1)),
        "--cancel",
        now_window,
    )
    doc = _LedgerStatus(service, home, ttl=0)()
    assert {c["name"]: c["state"] for c in doc["components"]}["rpc"] == "operational"
