"""Alert rules: Prometheus's format and lifecycle (pending → firing → resolved)."""

from __future__ import annotations

import pytest
import yaml

from opsledger.core import ConfigError
from opsledger.monitor.rules import (
    DEFAULT_RULES,
    AlertEvaluator,
    export_rule_file,
    load_rule_groups,
    parse_rule_file,
)
from opsledger.monitor.series import SeriesStore

LAG_RULE = [
    {
        "name": "g",
        "rules": [
            {
                "alert": "NodeHeadLag",
                "expr": "lag > 5",
                "for": "30s",
                "labels": {"severity": "critical"},
                "annotations": {"summary": "{{ $labels.target }} is {{ $value }} behind"},
            }
        ],
    }
]


def lag_store() -> SeriesStore:
    store = SeriesStore()
    store.describe("lag", "gauge", "blocks behind")
    return store


def test_an_alert_fires_only_after_its_for_and_resolves_when_the_condition_clears() -> None:
    store = lag_store()
    evaluator = AlertEvaluator(load_rule_groups(LAG_RULE))
    store.set("lag", {"target": "a"}, 9, 0)
    assert evaluator.evaluate(store, 0) == []  # pending
    store.set("lag", {"target": "a"}, 9, 20)
    assert evaluator.evaluate(store, 20) == []  # still pending: 20 s < 30 s
    store.set("lag", {"target": "a"}, 12, 31)
    (fired,) = evaluator.evaluate(store, 31)
    assert fired.kind == "firing"
    assert dict(fired.alert.labels) == {
        "alertname": "NodeHeadLag",
        "severity": "critical",
        "target": "a",
    }
    assert fired.alert.annotations()["summary"] == "a is 12 behind"
    store.set("lag", {"target": "a"}, 12, 40)
    assert evaluator.evaluate(store, 40) == []  # firing stays firing, no repeat
    store.set("lag", {"target": "a"}, 0, 50)
    (resolved,) = evaluator.evaluate(store, 50)
    assert resolved.kind == "resolved"
    assert evaluator.active == {}


def test_a_blip_shorter_than_for_never_fires() -> None:
    store = lag_store()
    evaluator = AlertEvaluator(load_rule_groups(LAG_RULE))
    store.set("lag", {"target": "a"}, 9, 0)
    evaluator.evaluate(store, 0)
    store.set("lag", {"target": "a"}, 1, 10)
    assert evaluator.evaluate(store, 10) == []
    store.set("lag", {"target": "a"}, 9, 20)
    assert evaluator.evaluate(store, 45) == []  # pending restarted at 20


def test_overrides_shorten_for_and_disable_rules() -> None:
    rules = load_rule_groups(DEFAULT_RULES, overrides={"NodeHeadLag": {"for": "2s"}})
    by_name = {rule.alert: rule for rule in rules}
    assert by_name["NodeHeadLag"].for_seconds == 2
    assert by_name["ChainHalted"].for_seconds == 60
    rules = load_rule_groups(DEFAULT_RULES, disabled=["PeerCountLow"])
    assert "PeerCountLow" not in {rule.alert for rule in rules}


def test_export_round_trips_and_is_a_prometheus_rule_file() -> None:
    rules = load_rule_groups(DEFAULT_RULES)
    text = export_rule_file(rules)
    document = yaml.safe_load(text)
    assert [g["name"] for g in document["groups"]] == ["opsledger-evm-nodes", "opsledger-probes"]
    again = load_rule_groups(parse_rule_file(text, "exported.yaml"))
    assert [(r.alert, r.expr_text, r.for_seconds, dict(r.labels)) for r in again] == [
        (r.alert, r.expr_text, r.for_seconds, dict(r.labels)) for r in rules
    ]


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ([{"name": "g", "rules": [{"alert": "A", "expr": "rate(x)"}]}], r"rules\[0\] \(A\)"),
        ([{"name": "g", "rules": [{"alert": "A", "expr": "x", "for": "soon"}]}], "duration"),
        ([{"name": "g", "rules": [{"record": "x:y", "expr": "x"}]}], "recording rules"),
        ([{"name": "g", "rules": [{"alert": "A", "expr": "x", "fro": "1m"}]}], "unknown key"),
        ([{"rules": []}], "needs a 'name'"),
        ([{"name": "g", "rules": []}, {"name": "g", "rules": []}], "defined twice"),
    ],
)
def test_bad_rules_name_where_and_why(groups: list[object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_rule_groups(groups, source="monitor.yaml")
