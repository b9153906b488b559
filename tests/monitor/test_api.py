"""The monitor's management API: targets added and removed at runtime (recorded, and
replayed at the next start), and silences made over HTTP."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

from opsledger.core import Subject
from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.service import MonitorService, build_rules
from opsledger.monitor.targets import apply_target_changes, target_from_spec
from opsledger.monitor.web import create_app

with warnings.catch_warnings():
    # starlette 1.x asks for httpx2 under its TestClient; the project pins httpx.
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient` is deprecated"
    )
    from starlette.testclient import TestClient


class ListRecorder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(
        self, tx_type: str, subject: Subject, body: dict[str, Any], refs: Sequence[str] = ()
    ) -> None:
        self.rows.append({"transaction": {"type": tx_type, "body": body}})

    def flush(self, timeout: float = 10.0) -> None:
        return None

    def close(self) -> None:
        return None


TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CONFIG = {
    "vantage": "eu",
    "targets": [{"name": "web", "kind": "http", "url": "http://127.0.0.1:1/"}],
}


def test_targets_added_and_removed_at_runtime_are_recorded_and_replayed() -> None:
    config = parse_monitor_config(CONFIG)
    recorder = ListRecorder()
    service = MonitorService(config, rules=build_rules(config), recorder=recorder)
    client = TestClient(create_app(service, dict, api_token=TOKEN), headers=AUTH)
    added = client.post(
        "/api/v1/targets",
        json={"name": "api", "kind": "http", "url": "http://127.0.0.1:2/h", "by": "carol"},
    )
    assert added.status_code == 201, added.text
    bad = client.post("/api/v1/targets", json={"name": "x", "kind": "http", "url": "ftp://h"})
    assert bad.status_code == 400 and "target.url" in bad.json()["error"]["message"]
    listed = client.get("/api/v1/targets").json()
    assert [t["name"] for t in listed["targets"]] == ["web", "api"]
    assert client.delete("/api/v1/targets/web?by=carol").status_code == 200
    assert client.delete("/api/v1/targets/web").status_code == 404
    assert [t.name for t in service.config.targets] == ["api"]
    changes = [r for r in recorder.rows if r["transaction"]["type"] == "monitor.config_changed"]
    assert [
        (r["transaction"]["body"]["action"], r["transaction"]["body"]["by"]) for r in changes
    ] == [
        ("target_added", "carol"),
        ("target_removed", "carol"),
    ]
    # the next start of this vantage: the file's targets plus the recorded changes
    replayed = apply_target_changes(parse_monitor_config(CONFIG), changes)
    assert [(t.name, t.url) for t in replayed.targets] == [("api", "http://127.0.0.1:2/h")]
    other = apply_target_changes(parse_monitor_config({**CONFIG, "vantage": "us"}), changes)
    assert [t.name for t in other.targets] == ["web"]


def test_silences_over_http() -> None:
    config = parse_monitor_config(CONFIG)
    recorder = ListRecorder()
    service = MonitorService(config, rules=build_rules(config), recorder=recorder)
    client = TestClient(create_app(service, dict, api_token=TOKEN), headers=AUTH)
    made = client.post(
        "/api/v1/silences",
        json={
            "matchers": ["alertname=NodeDown", "target=~web|api"],
            "duration": "2h",
            "created_by": "carol",
            "comment": "moving racks",
        },
    )
    assert made.status_code == 201, made.text
    ident = made.json()["silence"]["id"]
    for body in (
        {"matchers": [], "duration": "1h", "created_by": "c", "comment": "x"},
        {"matchers": ["a=b"], "duration": "1h", "created_by": "c", "comment": " "},
        {"matchers": ["a=b"], "duration": "soon", "created_by": "c", "comment": "x"},
        {"matchers": ["a=~("], "duration": "1h", "created_by": "c", "comment": "x"},
        {"matchers": ["a=b"], "duration": "1h", "comment": "x"},
    ):
        assert client.post("/api/v1/silences", json=body).status_code == 400, body
    (listed,) = client.get("/api/v1/silences").json()["silences"]
    assert listed["state"] == "active" and listed["created_by"] == "carol"
    assert client.delete(f"/api/v1/silences/{ident}?by=dave").status_code == 200
    assert client.delete(f"/api/v1/silences/{ident}").status_code == 404
    types = [r["transaction"]["type"] for r in recorder.rows]
    assert types == ["monitor.silence", "monitor.silence_expired"]


def test_the_write_api_needs_the_token_json_and_a_bounded_body() -> None:
    config = parse_monitor_config(CONFIG)
    service = MonitorService(config, rules=build_rules(config), recorder=ListRecorder())
    target = {"name": "api", "kind": "http", "url": "http://127.0.0.1:2/h"}
    closed = TestClient(create_app(service, dict))
    refused = closed.post("/api/v1/targets", json=target)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "disabled"
    client = TestClient(create_app(service, dict, api_token=TOKEN))
    assert client.post("/api/v1/targets", json=target).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/api/v1/targets", json=target, headers=wrong).status_code == 401
    # a browser's "simple" cross-site POST (text/plain) is refused even with the token
    plain = client.post(
        "/api/v1/targets",
        content=json.dumps(target),
        headers={**AUTH, "Content-Type": "text/plain"},
    )
    assert plain.status_code == 415
    # a shell command never comes from the API
    command = {"name": "pwn", "kind": "command", "command": "id > /tmp/pwned"}
    assert client.post("/api/v1/targets", json=command, headers=AUTH).status_code == 400
    huge = client.post(
        "/api/v1/alertmanager",
        content=b"[" + b"0," * 600_000 + b"0]",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert [t.name for t in service.config.targets] == ["web"]  # nothing changed
    # reads stay open, and never show credentials in a target's URL
    service.add_target(
        target_from_spec(
            {"name": "infura", "kind": "http", "url": "https://u:pw@rpc.example/v3/KEY?k=1"},
            config,
        ),
        by="carol",
    )
    listed = client.get("/api/v1/targets").json()["targets"]
    assert all("pw" not in t["url"] and "k=1" not in t["url"] for t in listed)
