"""Routing as Alertmanager does it, on a hand-driven clock: groups, timers, silences."""

from __future__ import annotations

from typing import Any

import pytest

from opsledger.core import ConfigError, InvalidInput
from opsledger.monitor.config import parse_monitor_config
from opsledger.notify.routing import (
    AlertState,
    Escalator,
    Matcher,
    Route,
    Router,
    Silence,
    alert_notifications,
    group_notification,
    parse_matcher,
)


def alert(name: str, target: str, status: str = "firing", at: float = 0.0, **labels: str) -> Any:
    all_labels = {"alertname": name, "target": target, "severity": "critical", **labels}
    return AlertState(
        f"{name}/{target}",
        all_labels,
        {"summary": f"{target} is in trouble", "runbook_url": "https://r/x"},
        status,  # type: ignore[arg-type]
        at,
    )


ROUTE = Route(
    "pager",
    ("pager",),
    matchers=(Matcher("severity", "critical"),),
    group_by=("alertname",),
    group_wait=30,
    group_interval=300,
    repeat_interval=3600,
)


def test_group_wait_gathers_alerts_that_start_together() -> None:
    router = Router([ROUTE])
    router.add(alert("NodeDown", "a"))
    assert router.flush(10) == []
    router.add(alert("NodeDown", "b", at=20))
    (due,) = router.flush(30)
    assert [a.fingerprint for a in due.alerts] == ["NodeDown/a", "NodeDown/b"]
    note = group_notification(due)
    assert note.title == "[FIRING:2] NodeDown (alertname=NodeDown)"
    assert dict(note.fields) == {"alertname": "NodeDown", "severity": "critical"}
    assert note.refs == ("NodeDown/a", "NodeDown/b")
    assert [n.key for n in alert_notifications(due)] == ["NodeDown/a", "NodeDown/b"]


def test_duplicates_are_dropped_changes_wait_for_group_interval_and_repeats_come_later() -> None:
    router = Router([ROUTE])
    router.add(alert("NodeDown", "a"))
    assert len(router.flush(30)) == 1
    router.add(alert("NodeDown", "a", at=40))  # the same alert again: nothing new
    assert router.flush(400) == []
    router.add(alert("NodeDown", "b", at=500))  # a change: waits for group_interval
    (due,) = router.flush(500)  # 470 s after the last notification: due at once
    assert len(due.alerts) == 2 and not due.repeat
    router.add(alert("NodeDown", "a", "resolved", at=600))
    assert router.flush(700) == []  # 200 s since the last: not yet
    (resolved,) = router.flush(800)
    assert [(a.fingerprint, a.status) for a in resolved.alerts] == [
        ("NodeDown/b", "firing"),
        ("NodeDown/a", "resolved"),
    ]
    assert group_notification(resolved).title.startswith("[FIRING:1 RESOLVED:1]")
    assert router.flush(1000) == []
    (repeat,) = router.flush(800 + 3600)
    assert repeat.repeat and [a.fingerprint for a in repeat.alerts] == ["NodeDown/b"]


def test_routes_match_in_order_unless_continue() -> None:
    catch_all = Route("hook", ("hook",), group_wait=0, group_interval=0)
    chained = Route("pager", ("pager",), (Matcher("severity", "critical"),), continue_matching=True)
    assert [r.name for r in Router([ROUTE, catch_all]).routes_for({"severity": "critical"})] == [
        "pager"
    ]
    assert [r.name for r in Router([chained, catch_all]).routes_for({"severity": "critical"})] == [
        "pager",
        "hook",
    ]
    assert [r.name for r in Router([ROUTE, catch_all]).routes_for({"severity": "warning"})] == [
        "hook"
    ]


def test_silences_mute_while_active_and_hide_the_resolution_too() -> None:
    router = Router([ROUTE])
    router.silences["s1"] = Silence(
        "s1", (parse_matcher("target=~a|b"),), 0, 1000, "carol", "maintenance"
    )
    router.add(alert("NodeDown", "a"))
    assert router.flush(30) == []
    router.add(alert("NodeDown", "a", "resolved", at=100))
    assert router.flush(200) == []  # its firing was never announced
    router.add(alert("NodeDown", "c", at=300))
    (due,) = router.flush(330)
    assert [a.fingerprint for a in due.alerts] == ["NodeDown/c"]
    router.add(alert("NodeDown", "b", at=900))
    assert router.flush(950) == []  # silenced
    (after,) = router.flush(1000)  # the silence ended: b is announced
    assert [a.fingerprint for a in after.alerts] == ["NodeDown/b", "NodeDown/c"]


def test_a_resolved_alert_that_was_never_announced_is_dropped() -> None:
    router = Router([ROUTE])
    router.add(alert("NodeDown", "a"))
    router.add(alert("NodeDown", "a", "resolved", at=10))
    assert router.flush(30) == []
    assert router.flush(10_000) == []


def test_escalation_fires_once_unless_acknowledged() -> None:
    route = Route("pager", ("pager",), escalate_after=900, escalate_to=("boss",))
    escalator = Escalator()
    escalator.watch("INC-1", alert("NodeDown", "a"), [route], 0)
    escalator.watch("INC-2", alert("NodeDown", "b"), [route], 0)
    assert escalator.due(899, lambda incident: False) == []
    due = escalator.due(900, lambda incident: incident == "INC-2")
    assert [(incident, note.event) for incident, _, note in due] == [
        ("INC-1", "incident.escalated")
    ]
    assert "within 15 min" in due[0][2].text
    assert escalator.due(5000, lambda incident: False) == []


@pytest.mark.parametrize(
    "text", ["", "a", "1a=b", "a=~(", "a~b"], ids=["empty", "bare", "digit", "regex", "tilde"]
)
def test_bad_matchers_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_matcher(text)


def test_matchers_are_anchored_like_alertmanagers() -> None:
    assert parse_matcher("target=~node").matches({"target": "node"})
    assert not parse_matcher("target=~node").matches({"target": "node-a"})
    assert parse_matcher('target!="x"').matches({"target": "y"})
    assert parse_matcher("missing=").matches({})


BASE: dict[str, Any] = {
    "targets": [{"name": "n", "kind": "http", "url": "http://127.0.0.1:1/"}],
    "notify": [
        {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:2/h"},
        {"name": "pager", "kind": "pagerduty", "routing_key": "k", "url": "http://127.0.0.1:3"},
    ],
}


def test_routes_config() -> None:
    config = parse_monitor_config(
        {
            **BASE,
            "routes": [
                {
                    "name": "critical",
                    "matchers": ["severity=critical"],
                    "receivers": ["pager"],
                    "group_by": ["alertname", "chain"],
                    "group_wait": "10s",
                    "repeat_interval": "1h",
                    "escalate_after": "15m",
                    "escalate_to": ["hook"],
                    "continue": True,
                },
                {"receivers": ["hook"], "group_by": ["..."], "group_wait": 0},
            ],
        }
    )
    critical, rest = config.routes
    assert (critical.group_wait, critical.group_interval, critical.repeat_interval) == (
        10,
        300,
        3600,
    )
    assert critical.escalate_after == 900 and critical.continue_matching
    assert rest.group_by is None and rest.group_wait == 0


@pytest.mark.parametrize(
    ("route", "key"),
    [
        ({"receivers": ["nobody"]}, "monitor.routes[0].receivers"),
        ({"receivers": []}, "monitor.routes[0].receivers"),
        ({"receivers": ["hook"], "matchers": ["a=~("]}, "monitor.routes[0].matchers"),
        ({"receivers": ["hook"], "escalate_after": "5m"}, "monitor.routes[0].escalate_after"),
        ({"receivers": ["hook"], "group_wait": "soon"}, "monitor.routes[0].group_wait"),
        ({"receivers": ["hook"], "when": 1}, "monitor.routes[0].when"),
    ],
)
def test_bad_routes_name_the_key(route: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_monitor_config({**BASE, "routes": [route]})
    assert caught.value.details.get("key") == key


def test_without_routes_each_notify_entry_is_an_immediate_route() -> None:
    config = parse_monitor_config({**BASE, "notify": [{**BASE["notify"][0], "match": {"a": "b"}}]})
    (route,) = config.routes
    assert (route.receivers, route.group_by, route.group_wait) == (("hook",), None, 0)
    assert route.matches({"a": "b"}) and not route.matches({"a": "c"})
