"""DORA figures from a known history (EVENTS), each checked against a value computed by
hand (SHOP and ALL_SERVICES, with the working in comments).

Events are ``(name, type, ts, body)``; a body value ``"@NAME"`` is the tx id of the event
called NAME (so the same history can be written to a real ledger, where tx ids are only
known after submission). NOW is 2026-11-30T00:00Z and the window is 30 days, so it starts
2026-10-31T00:00Z.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.pipeline.dora import DoraQuery, compute_dora, parse_window, tier

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def _digest(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def _deploy(
    service: str, environment: str, version: str, status: str, commits: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "service": service,
        "environment": environment,
        "version": version,
        "digest": _digest(f"{service}-{version}"),
        "strategy": "blue-green",
        "status": status,
        "commits": commits,
        **extra,
    }


def _push(*commits: tuple[str, str]) -> dict[str, Any]:
    return {
        "repo": "shop",
        "ref": "refs/heads/main",
        "commits": [{"id": c, "author": "dev", "time": t} for c, t in commits],
    }


def _deploy_pair(
    name: str,
    start: str,
    end: str,
    service: str,
    env: str,
    version: str,
    status: str,
    commits: list[str],
    **started_extra: Any,
) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        (f"{name}.started", "deploy.started", start,
         _deploy(service, env, version, "started", commits, **started_extra)),
        (f"{name}.finished", "deploy.finished", end,
         _deploy(service, env, version, status, commits, deploy=f"@{name}.started")),
    ]  # fmt: skip


EVENTS: list[tuple[str, str, str, dict[str, Any]]] = [
    # pushes: c0 and c5 long ago, the others in the window; c6 is never pushed
    ("push-old", "code.pushed", "2026-10-01T00:00:00.000Z",
     _push(("c0", "2026-10-01T00:00:00Z"), ("c5", "2026-10-01T00:00:00Z"))),
    ("push-1", "code.pushed", "2026-11-01T12:05:00.000Z",
     _push(("c1", "2026-11-01T00:00:00Z"), ("c2", "2026-11-01T12:00:00Z"))),
    ("push-3", "code.pushed", "2026-11-10T00:01:00.000Z", _push(("c3", "2026-11-10T00:00:00Z"))),
    ("push-p", "code.pushed", "2026-11-04T00:01:00.000Z", _push(("p1", "2026-11-04T00:00:00Z"))),
    ("push-4", "code.pushed", "2026-11-20T00:01:00.000Z", _push(("c4", "2026-11-20T00:00:00Z"))),
    # D0 before the window ships c0: c0 never counts, even when D1 ships it again
    *_deploy_pair("D0", "2026-10-15T00:00:00.000Z", "2026-10-15T00:10:00.000Z",
                  "shop", "production", "0.9", "success", ["c0"]),
    ("INC-0.opened", "incident.opened", "2026-10-20T00:00:00.000Z",
     {"id": "INC-0", "severity": "SEV3", "title": "before the window", "service": "shop"}),
    ("INC-0.resolved", "incident.resolved", "2026-11-01T00:00:00.000Z", {"id": "INC-0"}),
    # D1: c1 24.5 h, c2 12.5 h, c5 768.5 h
    *_deploy_pair("D1", "2026-11-02T00:00:00.000Z", "2026-11-02T00:30:00.000Z",
                  "shop", "production", "1.0", "success", ["c0", "c1", "c2", "c5"]),
    # payments: P1 ships p1 after 24 h; INC-P lasts 1 h
    *_deploy_pair("P1", "2026-11-05T00:00:00.000Z", "2026-11-05T00:00:00.000Z",
                  "payments", "production", "7.0", "success", ["p1"]),
    ("INC-P.opened", "incident.opened", "2026-11-06T00:00:00.000Z",
     {"id": "INC-P", "severity": "SEV2", "title": "payments slow", "service": "payments"}),
    ("INC-P.resolved", "incident.resolved", "2026-11-06T01:00:00.000Z", {"id": "INC-P"}),
    # caught before production: a failing test of digest T, and shop 1.2 rolled back in staging
    ("test-T", "test.finished", "2026-11-08T00:00:00.000Z",
     {"digest": _digest("T"), "suite": "unit", "passed": 9, "failed": 1, "status": "failure"}),
    *_deploy_pair("S1", "2026-11-09T00:00:00.000Z", "2026-11-09T00:05:00.000Z",
                  "shop", "staging", "1.2", "rolled_back", ["c3"]),
    # D2 (shop 1.1) rolled back in production 20 min after it started
    ("D2.started", "deploy.started", "2026-11-10T06:00:00.000Z",
     _deploy("shop", "production", "1.1", "started", ["c3"])),
    ("D2.rolled_back", "deploy.rolled_back", "2026-11-10T06:20:00.000Z",
     _deploy("shop", "production", "1.1", "rolled_back", ["c3"], deploy="@D2.started",
             reason="health")),
    ("D2.finished", "deploy.finished", "2026-11-10T06:21:00.000Z",
     _deploy("shop", "production", "1.1", "rolled_back", ["c3"], deploy="@D2.started")),
    # D3 (shop 1.2, also caught in staging as S1) ships c3 after 25 h and c6 (no push);
    # INC-1 names it when opened; D4 fixes it an hour before INC-1 is resolved
    *_deploy_pair("D3", "2026-11-11T00:00:00.000Z", "2026-11-11T01:00:00.000Z",
                  "shop", "production", "1.2", "success", ["c3", "c6"]),
    ("INC-1.opened", "incident.opened", "2026-11-12T00:00:00.000Z",
     {"id": "INC-1", "severity": "SEV2", "title": "checkout errors", "deploy": "@D3.started"}),
    *_deploy_pair("D4", "2026-11-12T01:30:00.000Z", "2026-11-12T02:00:00.000Z",
                  "shop", "production", "1.3", "success", [], fixes="INC-1"),
    ("INC-1.resolved", "incident.resolved", "2026-11-12T03:00:00.000Z",
     {"id": "INC-1", "deploy": "@D4.finished"}),
    # D5 ships c4 after 12 h; INC-2 is attributed to it after the fact, resolved after 10 h
    *_deploy_pair("D5", "2026-11-20T10:00:00.000Z", "2026-11-20T12:00:00.000Z",
                  "shop", "production", "1.4", "success", ["c4"]),
    ("INC-2.opened", "incident.opened", "2026-11-25T00:00:00.000Z",
     {"id": "INC-2", "severity": "SEV1", "title": "outage", "service": "shop"}),
    ("INC-2.attributed", "incident.attributed", "2026-11-25T01:00:00.000Z",
     {"id": "INC-2", "deploy": "@D5.finished", "decision": "confirmed"}),
    ("INC-2.resolved", "incident.resolved", "2026-11-25T10:00:00.000Z", {"id": "INC-2"}),
    # D6 errored (the deploy machinery failed): counted apart, not a deployment
    *_deploy_pair("D6", "2026-11-26T00:00:00.000Z", "2026-11-26T00:01:00.000Z",
                  "shop", "production", "1.5", "failure", []),
    # INC-3 is still open; the link to D4 it was opened with is rejected by a person
    ("INC-3.opened", "incident.opened", "2026-11-28T00:00:00.000Z",
     {"id": "INC-3", "severity": "SEV4", "title": "slow page", "service": "shop",
      "deploy": "@D4.started"}),
    ("INC-3.attributed", "incident.attributed", "2026-11-28T00:30:00.000Z",
     {"id": "INC-3", "deploy": "@D4.started", "decision": "rejected",
      "reason": "the page was slow before 1.3"}),
    # after NOW: ignored
    *_deploy_pair("D7", "2026-11-30T00:00:00.000Z", "2026-11-30T00:10:00.000Z",
                  "shop", "production", "1.6", "success", []),
]  # fmt: skip

H = 1.0
SHOP = {
    # 4 successful (D1, D3, D4, D5) in 30 days
    "deployment_frequency_per_day": 4 / 30,
    # lead times 12 (c4), 12.5 (c2), 24.5 (c1), 25 (c3), 768.5 (c5): median 24.5
    "lead_time_hours": 24.5,
    # failed D2 (rolled back), D3 (INC-1), D5 (INC-2) of D1..D5
    "change_failure_rate": 3 / 5,
    # INC-1 3 h, INC-2 10 h (INC-3 open, INC-0 before, INC-P other service): median 6.5
    "time_to_restore_hours": 6.5,
    # digests found defective: T (failing test), shop-1.2 (S1 in staging, D3 in production),
    # shop-1.1 (D2), shop-1.4 (D5); escaped to production: shop-1.1, 1.2, 1.4 -> 3 of 4
    "defect_escape_rate": 3 / 4,
    # D2 06:00 -> rollback 06:20 = 1/3 h; D3 started 11-11 00:00 -> D4 finished 11-12 02:00
    # (before INC-1 resolved at 03:00) = 26 h; D5 started 11-20 10:00 -> INC-2 resolved
    # 11-25 10:00 = 120 h; median 26
    "failed_deployment_recovery_time_hours": 26.0,
    # D4 (fixes INC-1) of 4 successful
    "deployment_rework_rate": 1 / 4,
    "tiers": {
        "deployment_frequency": "medium",  # 0.133/day: weekly or more is high (>= 1/7)
        "lead_time": "high",  # 24.5 h: one day or more, under a week
        "change_failure_rate": "low",  # 60% > 15%
        "time_to_restore": "high",  # 6.5 h: under a day
        "failed_deployment_recovery_time": "medium",  # 26 h: a day to a week
    },
    "totals": {
        "deployments": 5,
        "successful_deployments": 4,
        "failed_deployments": 3,
        "rolled_back_deployments": 1,
        "deployments_with_incidents": 2,
        "deploys_errored": 1,
        "commits_shipped": 6,
        "commits_with_lead_time": 5,
        "commits_without_push": 1,
        "incidents": 3,
        "incidents_resolved": 2,
        "failed_deployments_recovered": 3,
        "rework_deployments": 1,
        "defective_changes": 4,
        "escaped_defects": 3,
    },
}

ALL_SERVICES = {
    # P1 adds a fifth success
    "deployment_frequency_per_day": 5 / 30,
    # lead times 12, 12.5, 24 (p1), 24.5, 25, 768.5: median (24 + 24.5) / 2
    "lead_time_hours": 24.25,
    "change_failure_rate": 3 / 6,
    # INC-P 1 h, INC-1 3 h, INC-2 10 h: median 3
    "time_to_restore_hours": 3.0,
}


def _id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        return _id(value[1:])
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def rows() -> list[dict[str, Any]]:
    return [
        {
            "tx_id": _id(name),
            "leaf_index": index,
            "transaction": {"type": kind, "ts": ts, "body": _resolve(body)},
        }
        for index, (name, kind, ts, body) in enumerate(EVENTS)
    ]


def check(report: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if isinstance(value, float):
            assert report[key] == pytest.approx(value), key
        else:
            assert report[key] == value, key


def test_every_figure_for_one_service() -> None:
    report = compute_dora(rows(), DoraQuery(now=NOW, window=dt.timedelta(days=30), service="shop"))
    check(report, SHOP)
    assert report["window"] == {
        "start": "2026-10-31T00:00:00Z",
        "end": "2026-11-30T00:00:00Z",
        "days": 30.0,
    }
    failures = {f["version"]: f for f in report["failures"]}
    assert set(failures) == {"1.1", "1.2", "1.4"}
    assert failures["1.1"]["rolled_back"] and failures["1.1"]["incidents"] == []
    assert failures["1.2"]["incidents"] == ["INC-1"]
    assert failures["1.4"]["incidents"] == ["INC-2"]  # attributed after it was opened
    assert failures["1.2"]["deploy"] == _id("D3.started")


def test_every_service() -> None:
    report = compute_dora(rows(), DoraQuery(now=NOW, window=dt.timedelta(days=30)))
    check(report, ALL_SERVICES)


def test_order_of_rows_does_not_matter() -> None:
    query = DoraQuery(now=NOW, window=dt.timedelta(days=30), service="shop")
    assert compute_dora(list(reversed(rows())), query) == compute_dora(rows(), query)


def test_staging_is_its_own_environment() -> None:
    report = compute_dora(rows(), DoraQuery(now=NOW, service="shop", environment="staging"))
    assert report["totals"]["deployments"] == 1
    assert report["change_failure_rate"] == 1.0
    assert report["deployment_frequency_per_day"] == 0.0


def test_empty_history_has_no_figures_and_no_tiers() -> None:
    report = compute_dora([], DoraQuery(now=NOW))
    assert report["deployment_frequency_per_day"] == 0.0
    for key in ("lead_time_hours", "change_failure_rate", "time_to_restore_hours"):
        assert report[key] is None
    assert report["tiers"]["lead_time"] is None
    assert report["tiers"]["deployment_frequency"] == "low"


def test_a_rejected_attribution_is_undone() -> None:
    """INC-3 was opened naming D4, then rejected: without the rejection D4 would fail."""
    only = [r for r in rows() if r["tx_id"] != _id("INC-3.attributed")]
    report = compute_dora(only, DoraQuery(now=NOW, service="shop"))
    assert report["totals"]["failed_deployments"] == 4
    assert {f["version"] for f in report["failures"]} == {"1.1", "1.2", "1.3", "1.4"}


def test_an_unlinked_incident_fails_no_deploy() -> None:
    """No guessing: an incident right after a deploy, naming none, is not attributed."""
    only = [r for r in rows() if r["tx_id"] != _id("INC-2.attributed")]
    report = compute_dora(only, DoraQuery(now=NOW, service="shop"))
    assert report["totals"]["failed_deployments"] == 2
    assert report["change_failure_rate"] == pytest.approx(2 / 5)


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("deployment_frequency", 1.0, "elite"),
        ("deployment_frequency", 0.99, "high"),
        ("deployment_frequency", 1 / 7, "high"),
        ("deployment_frequency", 1 / 30, "medium"),
        ("deployment_frequency", 0.03, "low"),
        ("lead_time", 23.9, "elite"),
        ("lead_time", 24.0, "high"),
        ("lead_time", 168.0, "medium"),
        ("lead_time", 720.0, "low"),
        ("change_failure_rate", 0.05, "elite"),
        ("change_failure_rate", 0.10, "high"),
        ("change_failure_rate", 0.15, "medium"),
        ("change_failure_rate", 0.16, "low"),
        ("time_to_restore", 0.5, "elite"),
        ("time_to_restore", 1.0, "high"),
        ("time_to_restore", 24.0, "medium"),
        ("time_to_restore", 168.0, "low"),
        ("failed_deployment_recovery_time", 200.0, "low"),
    ],
)
def test_tier_bounds(metric: str, value: float, expected: str) -> None:
    assert tier(metric, value) == expected


@given(st.integers(min_value=1, max_value=10_000), st.sampled_from("hdw"))
def test_parse_window_round_trips(count: int, unit: str) -> None:
    seconds = {"h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_window(f"{count}{unit}").total_seconds() == count * seconds


@given(st.text(max_size=8))
def test_parse_window_refuses_anything_else(text: str) -> None:
    if re.fullmatch(r"\s*[0-9]+[hdw]\s*", text) and int(text.strip()[:-1]) > 0:
        return
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


_deploy_events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40 * 24),  # hours after 2026-10-21
        st.sampled_from(["success", "rolled_back", "failure"]),
        st.sampled_from(["production", "staging"]),
        st.booleans(),  # an incident names it
        st.booleans(),  # that incident is resolved
    ),
    max_size=25,
)


@given(_deploy_events)
def test_ratios_and_totals_are_consistent(events: list[tuple[int, str, str, bool, bool]]) -> None:
    base = dt.datetime(2026, 10, 21, tzinfo=dt.UTC)
    history: list[dict[str, Any]] = []

    def add(tx_id: str, kind: str, when: dt.datetime, body: dict[str, Any]) -> None:
        ts = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        history.append({"tx_id": tx_id, "transaction": {"type": kind, "ts": ts, "body": body}})

    for n, (hours, status, env, incident, resolved) in enumerate(events):
        when = base + dt.timedelta(hours=hours)
        body = _deploy("shop", env, str(n), "started", [f"c{n}"])
        add(f"s{n}", "deploy.started", when, body)
        add(f"f{n}", "deploy.finished", when, {**body, "status": status, "deploy": f"s{n}"})
        if incident:
            opened = {"id": f"I{n}", "severity": "SEV2", "title": "t", "deploy": f"s{n}"}
            add(f"i{n}", "incident.opened", when, opened)
        if incident and resolved:
            add(f"r{n}", "incident.resolved", when + dt.timedelta(hours=2), {"id": f"I{n}"})
    report = compute_dora(history, DoraQuery(now=NOW, service="shop"))
    t = report["totals"]
    assert t["successful_deployments"] <= t["deployments"]
    assert t["failed_deployments"] <= t["deployments"]
    assert t["incidents_resolved"] <= t["incidents"]
    assert t["escaped_defects"] <= t["defective_changes"]
    assert t["rework_deployments"] <= t["successful_deployments"]
    for key in ("change_failure_rate", "defect_escape_rate", "deployment_rework_rate"):
        assert report[key] is None or 0.0 <= report[key] <= 1.0
    if report["time_to_restore_hours"] is not None:
        assert report["time_to_restore_hours"] == 2.0  # every incident here lasts 2 h
    assert report["deployment_frequency_per_day"] == t["successful_deployments"] / 30
