"""The monitor's routing on a ledger: grouped notifications to a webhook and PagerDuty,
silences, escalation of an unacknowledged incident, and every outcome recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from opsledger.app import Home
from opsledger.app.monitor import build_receivers
from opsledger.cli import monitor as monitor_cli
from opsledger.cli._state import Consoles, State
from opsledger.client.base import Signer, all_transactions
from opsledger.client.local import LocalClient
from opsledger.core import Subject
from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.service import MonitorService, build_rules
from opsledger.monitor.silences import new_silence
from opsledger.notify.routing import parse_matcher
from opsledger.testing.webhook import webhook_receiver

from ..notify.test_channels import check_events_v2


class QueuedRecorder:
    """Collects records from any thread; the test submits them from its own."""

    def __init__(self, client: LocalClient, signer: Signer) -> None:
        self.client = client
        self.signer = signer
        self.queue: list[tuple[str, Subject, dict[str, Any], list[str]]] = []
        self.lock = threading.Lock()

    def record(
        self, tx_type: str, subject: Subject, body: dict[str, Any], refs: Sequence[str] = ()
    ) -> None:
        with self.lock:
            self.queue.append((tx_type, subject, body, list(refs)))

    def drain(self) -> None:
        with self.lock:
            items, self.queue = self.queue, []
        for tx_type, subject, body, refs in items:
            self.client.submit(self.signer.sign(tx_type, subject, body, refs))

    def flush(self, timeout: float = 10.0) -> None:
        return None

    def close(self) -> None:
        return None


def monitor_config(hook: str, pager: str, boss: str) -> dict[str, Any]:
    return {
        "targets": [
            {"name": n, "kind": "http", "url": "http://127.0.0.1:1/"} for n in ("a", "b", "c")
        ],
        "rules": {
            "defaults": False,
            "groups": [
                {
                    "name": "test",
                    "rules": [
                        {
                            "alert": "Down",
                            "expr": "opsledger_monitor_probe_up == 0",
                            "labels": {"severity": "critical"},
                            "annotations": {"summary": "{{ $labels.target }} is down"},
                        }
                    ],
                }
            ],
        },
        "notify": [
            {"name": "hook", "kind": "webhook", "url": hook},
            {"name": "pager", "kind": "pagerduty", "routing_key": "rk", "url": pager},
            {"name": "boss", "kind": "webhook", "url": boss},
        ],
        "routes": [
            {
                "name": "critical",
                "matchers": ["severity=critical"],
                "receivers": ["pager", "hook"],
                "group_by": ["alertname"],
                "group_wait": "30s",
                "group_interval": "5m",
                "escalate_after": "10m",
                "escalate_to": ["boss"],
            }
        ],
    }


def test_routing_silences_and_escalation_on_the_ledger(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init(admin="alice")
    node = home.open_node()
    # The monitor's clock is driven by hand from the start of this minute: the CLI at the
    # end reads silences with the real clock, so a fixed date would expire them (as one
    # did on 2026-12-01, an hour after the date this test once started from).
    now = [float(int(time.time()) // 60 * 60)]
    with webhook_receiver() as hook, webhook_receiver() as pager, webhook_receiver() as boss:
        config = parse_monitor_config(monitor_config(hook.url, pager.url, boss.url))
        try:
            client = LocalClient(node)
            actor = home.config().node
            recorder = QueuedRecorder(
                client, Signer(actor, home.load_key(actor), ledger=home.signer().ledger)
            )
            receivers = build_receivers(config, None, recorder)

            def acknowledged(incident: str) -> bool:
                rows = client.list_transactions(
                    {"type": "incident.acknowledged", "subject": f"incident:{incident}"}
                )
                return bool(rows)

            service = MonitorService(
                config,
                rules=build_rules(config),
                recorder=recorder,
                receivers=receivers,
                acknowledged=acknowledged,
                clock=lambda: now[0],
            )
            t0 = now[0]

            current: dict[str, int] = {}

            def step(at: float, **up: int) -> None:
                now[0] = t0 + at
                current.update(up)  # every target reports every step, as probes do
                for target, value in current.items():
                    service.store.set(
                        "opsledger_monitor_probe_up", {"target": target}, float(value), now[0]
                    )
                service.evaluate_once()
                recorder.drain()

            step(0, a=0, b=0, c=1)
            assert service.dispatch() == 0  # group_wait: nothing yet
            step(30)
            group = hook.wait_for(lambda p: p["event"] == "alert.firing")
            assert group["title"] == "[FIRING:2] Down (alertname=Down)"
            assert len(pager.wait_for(lambda p: True) and _settle(pager, 2)) == 2
            for event in pager.received:
                check_events_v2(event)
            assert {e["payload"]["source"] for e in pager.received} == {"a", "b"}

            incidents = {
                row["transaction"]["body"]["title"]: row["transaction"]["body"]["id"]
                for row in client.list_transactions({"type": "incident.opened"})
            }
            alice = home.signer("alice")
            client.submit(
                alice.sign(
                    "incident.acknowledged",
                    Subject("incident", incidents["a is down"]),
                    {"id": incidents["a is down"], "owner": "carol"},
                )
            )
            step(600)  # ten minutes: b's incident is nobody's
            escalation = boss.wait_for(lambda p: p["event"] == "incident.escalated")
            assert incidents["b is down"] in escalation["title"]
            escalated = client.list_transactions({"type": "incident.escalated"})
            assert [r["transaction"]["body"]["id"] for r in escalated] == [incidents["b is down"]]

            # a silence for c, made through the API path (recorded by the monitor)
            silence = new_silence(
                [parse_matcher("target=c")], now[0], now[0] + 3600, "dave", "c is being rebuilt"
            )
            service.add_silence(silence)
            step(700, a=1, c=0)  # a resolves, c goes down but is silenced
            resolved = hook.wait_for(
                lambda p: p["event"] == "alert.firing" and "RESOLVED" in p["title"]
            )
            assert resolved["title"] == "[FIRING:1 RESOLVED:1] Down (alertname=Down)"
            assert "c is down" not in resolved["text"]
            assert any(e["event_action"] == "resolve" for e in _settle(pager, 4)), pager.received

            for receiver in receivers.values():
                assert receiver.notifier.close(timeout=10)
            recorder.drain()
            notified = all_transactions(client, {"type": "monitor.notified"})
            outcomes = {
                (r["transaction"]["body"]["receiver"], r["transaction"]["body"]["outcome"])
                for r in notified
            }
            assert outcomes == {
                ("hook", "delivered"),
                ("pager", "delivered"),
                ("boss", "delivered"),
            }
            assert len(notified) == 2 + 4 + 1  # per notification and receiver, not per retry
            assert len(client.list_transactions({"type": "monitor.silence"})) == 1
            node.verify()
        finally:
            node.close()

    # the CLI: list the silence, expire it, see it gone
    listed = cli(home.path, "silence", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert '"c is being rebuilt"' in listed.stdout
    added = cli(
        home.path, "silence", "add", "-m", "alertname=Down", "--for", "2h", "--comment", "x"
    )
    assert added.exit_code == 0, added.output
    silence_id = added.stdout.split()[0]
    expired = cli(home.path, "silence", "expire", silence_id)
    assert expired.exit_code == 0, expired.output
    remaining = cli(home.path, "silence", "list", "--json")
    assert silence_id not in remaining.stdout
    bad = cli(home.path, "silence", "add", "-m", "alertname=~(", "--comment", "x")
    assert bad.exit_code != 0


def _settle(receiver: Any, count: int) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + 10
    while len(receiver.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(receiver.received)


def cli(home: Path, *args: str) -> Any:
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = State(home_path=home, verbose=False, consoles=Consoles.default())

    monitor_cli.register(app)
    return CliRunner().invoke(app, ["monitor", *args])
