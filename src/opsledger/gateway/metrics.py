"""Prometheus metrics on the gateway's own registry (never the process-global one, so
several gateways in one process, as in tests, do not collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests",
            "JSON-RPC requests answered",
            ["chain", "method", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "Time to answer one JSON-RPC request",
            ["chain", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Requests sent to upstreams",
            ["chain", "upstream", "method", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_seconds",
            "Upstream response time",
            ["chain", "upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries", "Reads retried elsewhere", ["chain", "method"], registry=r
        )
        self.hedges = Counter(
            "gateway_hedges", "Hedged reads", ["chain", "method", "winner"], registry=r
        )
        self.cache = Counter("gateway_cache", "Cache lookups", ["chain", "result"], registry=r)
        self.coalesced = Counter(
            "gateway_coalesced",
            "Requests answered by another's upstream call",
            ["chain"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused with 429", ["chain"], registry=r
        )
        self.head = Gauge(
            "gateway_upstream_head", "Upstream head block", ["chain", "upstream"], registry=r
        )
        self.lag = Gauge(
            "gateway_upstream_lag",
            "Blocks behind the gateway head",
            ["chain", "upstream"],
            registry=r,
        )
        self.up = Gauge(
            "gateway_upstream_in_rotation",
            "1 if the upstream serves traffic",
            ["chain", "upstream"],
            registry=r,
        )
        self.circuit = Gauge(
            "gateway_upstream_circuit",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["chain", "upstream"],
            registry=r,
        )
        self.chain_head = Gauge(
            "gateway_chain_head", "The head the gateway advertises", ["chain"], registry=r
        )
        self.reorgs = Counter("gateway_reorgs", "Reorgs detected", ["chain"], registry=r)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: ``labels`` takes a lock and builds a
        tuple per call, measurable on a path that runs several times per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            self._children[key] = found
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
