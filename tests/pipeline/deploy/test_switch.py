"""The switch's routing and measurements, without sockets."""

from __future__ import annotations

import collections

from hypothesis import given
from hypothesis import strategies as st

from opsledger.pipeline.deploy.switch import Router, percentile


def test_smooth_weighted_round_robin_is_exact() -> None:
    router = Router()
    router.set_routes(
        {
            "pools": {
                "blue": {"weight": 95, "upstreams": ["127.0.0.1:1", "127.0.0.1:2"]},
                "green": {"weight": 5, "upstreams": ["127.0.0.1:3"]},
            }
        }
    )
    picks = [router.pick() for _ in range(100)]
    counts = collections.Counter(p[0] for p in picks if p)
    assert counts == {"blue": 95, "green": 5}
    blue = collections.Counter(p[1] for p in picks if p and p[0] == "blue")
    assert blue == {"127.0.0.1:1": 48, "127.0.0.1:2": 47}


def test_no_weight_no_route() -> None:
    router = Router()
    router.set_routes({"pools": {"blue": {"weight": 0, "upstreams": ["127.0.0.1:1"]}}})
    assert router.pick() is None


def test_stats_per_pool() -> None:
    router = Router()
    for status, latency in [(200, 10.0), (500, 30.0), (502, 20.0), (200, 40.0)]:
        router.observe("green", status, latency)
    router.observe("blue", 500, 1.0)
    stats = router.stats("green", 60)
    assert (stats.requests, stats.errors, stats.error_rate, stats.p95_ms) == (4, 2, 0.5, 40.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_percentile_is_a_sample_at_or_above_95_percent(values: list[float]) -> None:
    p95 = percentile(values, 95)
    assert p95 in values
    assert sum(1 for v in values if v <= p95) >= 0.95 * len(values)


@given(
    st.dictionaries(
        st.sampled_from(["blue", "green", "canary"]),
        st.integers(min_value=0, max_value=100),
        min_size=1,
    )
)
def test_weights_are_honoured_over_one_cycle(weights: dict[str, int]) -> None:
    router = Router()
    router.set_routes(
        {
            "pools": {
                n: {"weight": w, "upstreams": [f"127.0.0.1:{i}"]}
                for i, (n, w) in enumerate(weights.items())
            }
        }
    )
    total = sum(weights.values())
    counts = collections.Counter(p[0] for p in (router.pick() for _ in range(total)) if p)
    assert counts == {n: w for n, w in weights.items() if w > 0}
