"""The monitor's sample store: recent points per series, for rules and for ``/metrics``.

Probes write here; the rule evaluator reads ranges from here (``promql.SampleSource``);
``SeriesCollector`` exports the newest point of every series to ``prometheus_client`` so
a real Prometheus scrapes exactly the series the in-process rules see. Points older than
``retention`` are dropped as new ones arrive, which bounds memory by targets × rate.
Histograms are stored the way Prometheus exposes them (cumulative ``_bucket{le}``,
``_sum``, ``_count``) so ``histogram_quantile(rate(..._bucket[5m]))`` works unchanged.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from opsledger.monitor.promql import Labels

__all__ = ["DEFAULT_BUCKETS", "SeriesCollector", "SeriesStore"]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)

Kind = Literal["gauge", "counter", "histogram"]


def _labels(name: str, labels: Mapping[str, str]) -> Labels:
    return tuple(sorted({**labels, "__name__": name}.items()))


@dataclass
class _Family:
    kind: Kind
    help: str
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    retention: float | None = None  # None: the store's
    series: dict[Labels, list[tuple[float, float]]] = field(default_factory=dict)


class SeriesStore:
    """Thread-safe, bounded in time: ``retention`` seconds of points per series."""

    def __init__(self, retention: float = 6 * 3600.0) -> None:
        self.retention = retention
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def describe(
        self,
        name: str,
        kind: Kind,
        help_text: str,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        *,
        retention: float | None = None,
    ) -> None:
        """Declare a metric; ``retention`` overrides the store's for this family (the SLO
        counters are read over 3-day windows)."""
        bounds = tuple(sorted(set(buckets) | {math.inf}))
        with self._lock:
            self._families.setdefault(name, _Family(kind, help_text, bounds, retention))

    def set(self, name: str, labels: Mapping[str, str], value: float, at: float) -> None:
        """A gauge's new value (or a counter's new total)."""
        with self._lock:
            family = self._family(name)
            self._append(family, _labels(name, labels), value, at)

    def inc(self, name: str, labels: Mapping[str, str], at: float, amount: float = 1.0) -> None:
        with self._lock:
            family = self._family(name)
            key = _labels(name, labels)
            points = family.series.get(key)
            current = points[-1][1] if points else 0.0
            self._append(family, key, current + amount, at)

    def observe(self, name: str, labels: Mapping[str, str], value: float, at: float) -> None:
        """One observation into histogram ``name`` (its buckets, sum and count)."""
        with self._lock:
            family = self._family(name)
            first = bisect.bisect_left(family.buckets, value)
            for i, bound in enumerate(family.buckets):
                key = _labels(f"{name}_bucket", {**labels, "le": _format_le(bound)})
                points = family.series.get(key)
                current = points[-1][1] if points else 0.0
                self._append(family, key, current + (1.0 if i >= first else 0.0), at)
            for suffix, amount in (("_sum", value), ("_count", 1.0)):
                key = _labels(f"{name}{suffix}", labels)
                points = family.series.get(key)
                current = points[-1][1] if points else 0.0
                self._append(family, key, current + amount, at)

    def forget(self, name: str, labels: Mapping[str, str]) -> None:
        """Drop a series (a target removed from the config)."""
        with self._lock:
            family = self._families.get(name)
            if family is not None:
                family.series.pop(_labels(name, labels), None)

    def series(self, name: str) -> Iterator[tuple[Labels, Sequence[tuple[float, float]]]]:
        """Every point of every series of ``name`` (copies: for tools, not the hot path)."""
        return self.window(name, -math.inf, math.inf)

    def window(
        self, name: str, start: float, end: float
    ) -> Iterator[tuple[Labels, Sequence[tuple[float, float]]]]:
        """The points of each series of ``name`` with ``start <= time <= end``, found by
        bisection: a rule round costs O(series × log points), not every stored point."""
        with self._lock:
            family = self._families.get(_family_name(name, self._families))
            if family is None:
                return iter(())
            picked = []
            for labels, points in family.series.items():
                if dict(labels)["__name__"] != name:
                    continue
                lo = bisect.bisect_left(points, start, key=_time)
                hi = bisect.bisect_right(points, end, key=_time)
                if hi > lo:
                    picked.append((labels, points[lo:hi]))
        return iter(picked)

    def families(self) -> list[tuple[str, Kind, str, list[tuple[Labels, float]]]]:
        with self._lock:
            return [
                (
                    name,
                    fam.kind,
                    fam.help,
                    [(labels, points[-1][1]) for labels, points in fam.series.items() if points],
                )
                for name, fam in sorted(self._families.items())
            ]

    def _family(self, name: str) -> _Family:
        family = self._families.get(name)
        if family is None:
            raise KeyError(f"metric {name!r} was not described")
        return family

    def _append(self, family: _Family, key: Labels, value: float, at: float) -> None:
        points = family.series.setdefault(key, [])
        point = (float(at), float(value))
        if points and point[0] < points[-1][0]:
            # probes from several tasks may finish out of order: keep the list sorted
            bisect.insort(points, point, key=_time)
        else:
            points.append(point)
        horizon = at - (family.retention or self.retention)
        if points[0][0] < horizon:
            del points[: bisect.bisect_left(points, horizon, key=_time)]


def _time(point: tuple[float, float]) -> float:
    return point[0]


def _format_le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _family_name(series_name: str, families: Mapping[str, _Family]) -> str:
    if series_name in families:
        return series_name
    for suffix in ("_bucket", "_sum", "_count"):
        if series_name.endswith(suffix):
            base = series_name[: -len(suffix)]
            if base in families and families[base].kind == "histogram":
                return base
    return series_name


class SeriesCollector(Collector):
    """Exports the newest point of every stored series to a ``prometheus_client`` registry."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        for name, kind, help_text, points in self.store.families():
            # prometheus_client names a counter family without its ``_total`` (it adds
            # it back in HELP/TYPE), so ``x_total`` must not become ``x_total_total``
            family = name.removesuffix("_total") if kind == "counter" else name
            metric = Metric(family, help_text, "gauge" if kind == "gauge" else kind)
            for labels, value in points:
                mapping = dict(labels)
                sample_name = mapping.pop("__name__")
                metric.add_sample(sample_name, mapping, value)
            yield metric
