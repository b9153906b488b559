"""Prometheus metrics of the indexer, in a registry of its own.

A registry per service (not the global one) lets tests and two indexers in one process
each count their own. ``serve(listen)`` exposes it over HTTP on 127.0.0.1 by default.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["IndexerMetrics"]


class IndexerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["chain"]
        self.height = Gauge(
            "opsledger_indexer_height", "Last indexed block.", labels, registry=self.registry
        )
        self.head = Gauge(
            "opsledger_indexer_head",
            "Chain head seen by the indexer.",
            labels,
            registry=self.registry,
        )
        self.lag = Gauge(
            "opsledger_indexer_lag_blocks",
            "head - indexed height.",
            labels,
            registry=self.registry,
        )
        self.events = Counter(
            "opsledger_indexer_events", "Events written.", labels, registry=self.registry
        )
        self.events_per_second = Gauge(
            "opsledger_indexer_events_per_second",
            "Events written per second (recent).",
            labels,
            registry=self.registry,
        )
        self.rpc_calls = Gauge(
            "opsledger_indexer_rpc_calls",
            "JSON-RPC calls made.",
            labels,
            registry=self.registry,
        )
        self.rpc_errors = Gauge(
            "opsledger_indexer_rpc_errors",
            "JSON-RPC calls that failed.",
            labels,
            registry=self.registry,
        )
        self.reorgs = Counter(
            "opsledger_indexer_reorgs", "Reorgs rolled back.", labels, registry=self.registry
        )
        self.reorg_depth = Histogram(
            "opsledger_indexer_reorg_depth",
            "Depth of rolled-back reorgs, in blocks.",
            labels,
            buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128),
            registry=self.registry,
        )

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
