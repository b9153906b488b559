"""Alertmanager's webhook (version 4) into the monitor's alert lifecycle.

A team that already runs Prometheus and Alertmanager points a ``webhook_configs``
receiver at ``/api/v1/alertmanager``; each alert's ``fingerprint`` pairs its firing and
resolved notifications, and repeats of an alert already known to be firing are not new
transitions (Alertmanager re-sends on its repeat interval).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opsledger.core.errors import InvalidInput
from opsledger.monitor.promql import Number
from opsledger.monitor.rules import Alert, AlertTransition, Rule

__all__ = ["transitions_from_webhook"]


def _rule(name: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> Rule:
    return Rule(
        group="alertmanager",
        alert=name,
        expr_text="",
        expr=Number(0.0),
        for_seconds=0.0,
        keep_firing_for=0.0,
        labels={k: v for k, v in labels.items() if k == "severity"},
        annotations=dict(annotations),
    )


def transitions_from_webhook(
    payload: Mapping[str, Any], known: MutableMapping[str, Alert], at: float
) -> Iterator[AlertTransition]:
    if not isinstance(payload, Mapping) or not isinstance(payload.get("alerts"), list):
        raise InvalidInput("an Alertmanager webhook body has an 'alerts' list", field="alerts")
    for index, raw in enumerate(payload["alerts"]):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("labels"), Mapping):
            raise InvalidInput(f"alerts[{index}] needs labels", field=f"alerts[{index}]")
        labels = {str(k): str(v) for k, v in raw["labels"].items()}
        name = labels.get("alertname")
        if not name:
            raise InvalidInput(f"alerts[{index}] has no alertname label", field=f"alerts[{index}]")
        annotations = {str(k): str(v) for k, v in (raw.get("annotations") or {}).items()}
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise InvalidInput(f"alerts[{index}].status must be firing or resolved", field="status")
        fingerprint = str(raw.get("fingerprint") or sorted(labels.items()))
        key = f"alertmanager:{fingerprint}"
        if status == "firing":
            if key in known:
                continue
            alert = Alert(_rule(name, labels, annotations), tuple(sorted(labels.items())), 0.0, at)
            alert.state = "firing"
            alert.fired_at = at
            known[key] = alert
            yield AlertTransition("firing", alert, at)
        elif key in known:
            yield AlertTransition("resolved", known.pop(key), at)
