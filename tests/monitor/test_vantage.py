"""Several vantage points: an alert labelled ``agree: 2`` pages only when two monitors
see it, and then only once (the first vantage by name acts for both)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opsledger.core import Subject
from opsledger.monitor.config import parse_monitor_config
from opsledger.monitor.service import MonitorService, build_rules, peer_firing


class SharedLedger:
    """The rows both monitors would read back from the ledger, in order."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def recorder(self, actor: str) -> Any:
        ledger = self

        class _Recorder:
            def record(
                self,
                tx_type: str,
                subject: Subject,
                body: dict[str, Any],
                refs: Sequence[str] = (),
            ) -> None:
                ledger.rows.append({"transaction": {"type": tx_type, "actor": actor, "body": body}})

            def flush(self, timeout: float = 10.0) -> None:
                return None

            def close(self) -> None:
                return None

        return _Recorder()

    def types(self, tx_type: str) -> list[dict[str, Any]]:
        return [r["transaction"] for r in self.rows if r["transaction"]["type"] == tx_type]


def monitor(vantage: str, ledger: SharedLedger, now: list[float]) -> MonitorService:
    config = parse_monitor_config(
        {
            "vantage": vantage,
            "targets": [{"name": "site", "kind": "http", "url": "http://127.0.0.1:1/"}],
            "rules": {
                "overrides": {
                    "NodeDown": {"for": "0s", "labels": {"severity": "critical", "agree": 2}}
                }
            },
        }
    )
    return MonitorService(
        config, rules=build_rules(config), recorder=ledger.recorder(vantage), clock=lambda: now[0]
    )


def observe(service: MonitorService, up: int, at: float) -> None:
    labels = {"target": "site", "kind": "http"}
    service.store.set("opsledger_monitor_probe_up", labels, float(up), at)
    service.evaluate_once()


def test_one_vantage_alone_does_not_page_two_together_page_once() -> None:
    ledger = SharedLedger()
    now = [1000.0]
    eu, us = monitor("eu", ledger, now), monitor("us", ledger, now)
    observe(eu, 0, now[0])  # only eu sees the site down: its alert is on the ledger...
    observe(us, 1, now[0])
    for service in (eu, us):
        service.sync_peers(peer_firing(ledger.rows))
    assert [t["body"]["vantage"] for t in ledger.types("alert.fired")] == ["eu"]
    assert ledger.types("incident.opened") == []  # ...but nobody is paged
    now[0] += 15
    observe(us, 0, now[0])  # now us agrees
    for service in (us, eu):
        service.sync_peers(peer_firing(ledger.rows))
    (opened,) = ledger.types("incident.opened")
    assert opened["actor"] == "eu"  # the first vantage by name acts for both
    now[0] += 15
    observe(eu, 1, now[0])
    observe(us, 1, now[0])
    for service in (eu, us):
        service.sync_peers(peer_firing(ledger.rows))
    updates = ledger.types("incident.updated")
    assert [u["actor"] for u in updates] == ["eu"]
    assert peer_firing(ledger.rows) == {}
