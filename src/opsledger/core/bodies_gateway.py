"""Bodies of the transactions the gateway writes: config versions and upstream state.

The gateway records changes, never requests: which config (by digest) served which
chains, and when an upstream went in or out of rotation and why. Requests are metrics.
"""

from __future__ import annotations

from typing import Any

from opsledger.core.schema_parts import count, digest, obj, string, text

__all__ = ["SCHEMAS"]

_STATES = {
    "enum": [
        "starting",
        "healthy",
        "lagging",
        "syncing",
        "slow",
        "open",
        "half_open",
        "wrong_chain",
    ]
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "gateway.config_loaded": obj(
        {"digest": digest, "chains": {"type": "array", "items": string, "maxItems": 1000}},
        {"listen": string, "upstreams": count},
    ),
    "gateway.upstream_state": obj(
        {"chain": string, "upstream": string, "state": _STATES, "reason": text},
        {"head": {"type": "integer", "minimum": -1}, "previous": _STATES},
    ),
}
