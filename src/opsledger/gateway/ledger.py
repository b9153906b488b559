"""What the gateway writes to the ledger: config versions and upstream state changes.

Through the ``Recorder`` protocol only, so the hot path never waits for the ledger and
a gateway without a home (``NullRecorder``) behaves the same. Never requests, never
URLs (they may carry provider keys): names, states, reasons and a config digest.
"""

from __future__ import annotations

import re

from opsledger.client.base import Recorder
from opsledger.core.tx import Subject
from opsledger.gateway.config import GatewayConfig

__all__ = ["GatewayLedger"]

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


class GatewayLedger:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._last: dict[tuple[str, str], str] = {}

    def config_loaded(self, config: GatewayConfig) -> None:
        self.recorder.record(
            "gateway.config_loaded",
            Subject("gateway", config.listen),
            {
                "digest": config.digest(),
                "chains": [c.name for c in config.chains],
                "listen": config.listen,
                "upstreams": sum(len(c.upstreams) for c in config.chains),
            },
        )

    def upstream_state(self, chain: str, upstream: str, state: str, reason: str, head: int) -> None:
        """Record a state change (the first state seen is recorded too: it is a change
        from "unknown" and tells the reader where the gateway started)."""
        previous = self._last.get((chain, upstream))
        if previous == state:
            return
        self._last[(chain, upstream)] = state
        body: dict[str, object] = {
            "chain": chain,
            "upstream": upstream,
            "state": state,
            # Errors can quote the URL, and URLs can carry provider keys: scrub them.
            "reason": _URL.sub("<url>", reason)[:4000] or state,
            "head": max(-1, head),
        }
        if previous is not None:
            body["previous"] = previous
        self.recorder.record(
            "gateway.upstream_state", Subject("upstream", f"{chain}/{upstream}"), body
        )

    def close(self) -> None:
        self.recorder.flush()
        self.recorder.close()
