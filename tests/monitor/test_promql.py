"""The in-process PromQL subset gives Prometheus's answers for what alert rules use."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from opsledger.monitor.promql import PromQLError, Sample, evaluate, parse, parse_duration
from opsledger.monitor.series import SeriesCollector, SeriesStore


def store_with(points: dict[str, list[tuple[dict[str, str], float, float]]]) -> SeriesStore:
    store = SeriesStore()
    for name, rows in points.items():
        store.describe(name, "gauge", name)
        for labels, value, at in rows:
            store.set(name, labels, value, at)
    return store


def values(result: object) -> dict[tuple[tuple[str, str], ...], float]:
    assert isinstance(result, list)
    return {s.labels: s.value for s in result if isinstance(s, Sample)}


def test_durations() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    for bad in ("", "5", "m5", "5x"):
        with pytest.raises(PromQLError):
            parse_duration(bad)


def test_selector_comparison_keeps_matching_series_with_labels() -> None:
    store = store_with(
        {
            "peers": [
                ({"target": "a", "chain": "local"}, 3, 100),
                ({"target": "b", "chain": "local"}, 25, 100),
            ]
        }
    )
    got = values(evaluate('peers{chain="local"} < 10', store, at=110))
    assert got == {(("__name__", "peers"), ("chain", "local"), ("target", "a")): 3.0}
    assert values(evaluate('peers{target=~"a|b"} < bool 10', store, at=110)) == {
        (("chain", "local"), ("target", "a")): 1.0,
        (("chain", "local"), ("target", "b")): 0.0,
    }
    # staleness: nothing newer than the 5-minute lookback
    assert evaluate("peers", store, at=100 + 301) == []


def test_counter_rate_extrapolates_like_prometheus() -> None:
    store = SeriesStore()
    store.describe("requests_total", "counter", "requests")
    for t in range(0, 61, 15):
        store.set("requests_total", {"job": "x"}, float(t), float(t))
    # samples at 15..60 inside (0, 60]: 45 over 45 s, extrapolated to the window → 1/s
    assert values(evaluate("rate(requests_total[1m])", store, at=60)) == {(("job", "x"),): 1.0}
    assert values(evaluate("increase(requests_total[1m])", store, at=60)) == {(("job", "x"),): 60.0}
    # a counter reset counts as continuing from zero
    store.set("requests_total", {"job": "x"}, 5.0, 75.0)
    assert values(evaluate("resets(requests_total[1m])", store, at=75)) == {(("job", "x"),): 1.0}


def test_aggregation_arithmetic_and_vector_matching() -> None:
    store = store_with(
        {
            "head": [
                ({"target": "a", "chain": "c"}, 100, 10),
                ({"target": "b", "chain": "c"}, 90, 10),
            ]
        }
    )
    best = values(evaluate("max by (chain) (head)", store, at=10))
    assert best == {(("chain", "c"),): 100.0}
    # two right-hand series per match group: Prometheus refuses this too
    with pytest.raises(PromQLError, match="many-to-one"):
        evaluate("max without (target) (head) - ignoring (target) head", store, 10)
    lagging = values(
        evaluate("scalar(max(head)) - head > 5", store, at=10)  # the usual lag idiom
    )
    assert lagging == {(("chain", "c"), ("target", "b")): 10.0}
    assert evaluate("count(head)", store, 10) == [Sample((), 2.0, 10)]
    assert evaluate("2 ^ 3 ^ 2", store, 10) == 512.0  # right-associative like Prometheus


def test_histogram_quantile_from_buckets() -> None:
    store = SeriesStore()
    store.describe("lat", "histogram", "latency", buckets=(0.1, 0.5, 1.0))
    for i in range(100):
        store.observe("lat", {"target": "a"}, 0.05 if i < 90 else 0.7, float(i))
    got = values(evaluate("histogram_quantile(0.95, rate(lat_bucket[5m]))", store, at=100))
    ((labels, p95),) = got.items()
    assert labels == (("target", "a"),)
    assert 0.5 < p95 <= 1.0  # in the (0.5, 1] bucket, interpolated
    got = values(evaluate("histogram_quantile(0.5, rate(lat_bucket[5m]))", store, at=100))
    assert next(iter(got.values())) <= 0.1


def test_absent_and_set_operations() -> None:
    store = store_with({"up": [({"target": "a"}, 1, 5)]})
    assert values(evaluate('absent(up{target="zz"})', store, 6)) == {(("target", "zz"),): 1.0}
    assert evaluate('absent(up{target="a"})', store, 6) == []
    assert len(values(evaluate('up or up{target="a"}', store, 6))) == 1
    assert evaluate("up unless up", store, 6) == []


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("rate(x)", "needs a range selector"),
        ("x offset 5m", "not supported"),
        ("rate(x[5m:1m])", "subqueries"),
        ("sum(x) by", "expected '\\('"),
        ('x{a="1"', "expected"),
        ("label_replace(x)", "not supported"),
        ("x + on(a) group_left y", "group_left"),
        ("", "empty"),
        ('x{a=~"("}', "regular expression"),
    ],
)
def test_unsupported_or_broken_expressions_are_refused_with_a_position(
    expr: str, fragment: str
) -> None:
    with pytest.raises(PromQLError, match=fragment):
        parse(expr)


@given(st.text(max_size=60))
def test_parser_never_fails_other_than_with_promql_error(text: str) -> None:
    with contextlib.suppress(PromQLError):
        parse(text)


def test_the_store_exports_what_rules_see() -> None:
    store = SeriesStore()
    store.describe("opsledger_monitor_up", "gauge", "1 when the last probe succeeded")
    store.set("opsledger_monitor_up", {"target": "a"}, 1.0, 1.0)
    store.describe("lat", "histogram", "latency", buckets=(0.1,))
    store.observe("lat", {"target": "a"}, 0.05, 1.0)
    registry = CollectorRegistry()
    registry.register(SeriesCollector(store))
    text = generate_latest(registry).decode()
    assert 'opsledger_monitor_up{target="a"} 1.0' in text
    assert 'lat_bucket{le="0.1",target="a"} 1.0' in text
    assert 'lat_count{target="a"} 1.0' in text
    assert math.isclose(
        values(evaluate("lat_sum", store, 1.0))[(("__name__", "lat_sum"), ("target", "a"))], 0.05
    )
