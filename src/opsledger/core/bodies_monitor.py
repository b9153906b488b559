"""Bodies of the transactions monitoring writes: alerts, incidents and postmortems.

Notifications leave a trace too: ``monitor.notified`` is the final outcome of one
notification to one receiver (not every retry); ``monitor.silence`` and
``monitor.silence_expired`` say who muted which alerts, until when, and why;
``monitor.config_changed`` records a target added or removed through the API;
``incident.escalated`` says an incident went unacknowledged past its route's limit.

An incident is a story told in transactions that share its ``id``: opened (by a critical
alert or a person), acknowledged (with an owner and an expiry), assigned, updated,
attributed to the deploy that caused it (a person confirms what the timeline proposes;
DORA reads this link), resolved, and its postmortem and action items. Alerts carry their
fingerprint (rule plus labels) so a fired alert and its resolution pair up.
"""

from __future__ import annotations

from typing import Any

from opsledger.core.schema_parts import count, obj, string, text, timestamp, tx_id

__all__ = ["SCHEMAS"]

_severity = {"enum": ["SEV1", "SEV2", "SEV3", "SEV4"]}
_labels = {
    "type": "object",
    "maxProperties": 64,
    "additionalProperties": {"type": "string", "maxLength": 1024},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "alert.fired": obj(
        {"alert": string, "severity": string},
        {
            "summary": text,
            "fingerprint": string,
            "labels": _labels,
            "annotations": _labels,
            "value": {"type": "number"},
            "vantage": string,
        },
    ),
    "alert.resolved": obj({"alert": string}, {"fingerprint": string, "vantage": string}),
    "incident.opened": obj(
        {"id": string, "severity": _severity, "title": text},
        {"alert": string, "fingerprint": string, "deploy": tx_id, "service": string},
    ),
    "incident.acknowledged": obj({"id": string, "owner": string}, {"until": timestamp}),
    "incident.assigned": obj({"id": string, "owner": string}),
    "incident.updated": obj({"id": string, "text": text}, {"severity": _severity}),
    "incident.attributed": obj(
        {"id": string, "deploy": tx_id, "decision": {"enum": ["confirmed", "rejected"]}},
        {"reason": text},
    ),
    "incident.resolved": obj({"id": string}, {"summary": text}),
    "incident.postmortem": obj({"id": string, "digest": {"type": "string"}}, {"markdown": text}),
    "incident.escalated": obj(
        {"id": string, "to": {"type": "array", "items": string, "maxItems": 64}},
        {"after_seconds": {"type": "number", "minimum": 0}},
    ),
    "monitor.notified": obj(
        {
            "receiver": string,
            "event": string,
            "outcome": {"enum": ["delivered", "failed", "dropped", "abandoned"]},
        },
        {
            "kind": string,
            "title": text,
            "attempts": count,
            "alerts": {"type": "array", "items": string, "maxItems": 100},
            "key": string,
        },
    ),
    "monitor.silence": obj(
        {
            "id": string,
            "matchers": {
                "type": "array",
                "minItems": 1,
                "maxItems": 32,
                "items": obj(
                    {"name": string, "value": {"type": "string", "maxLength": 4096}},
                    {"op": {"enum": ["=", "!=", "=~", "!~"]}},
                ),
            },
            "starts_at": timestamp,
            "ends_at": timestamp,
            "comment": text,
        },
        {"created_by": string},
    ),
    "monitor.maintenance": obj(
        {
            "id": string,
            "title": text,
            "components": {"type": "array", "items": string, "minItems": 1, "maxItems": 64},
            "starts_at": timestamp,
            "ends_at": timestamp,
        },
        {"cancelled": {"type": "boolean"}},
    ),
    "monitor.silence_expired": obj({"id": string}, {"by": string}),
    "monitor.config_changed": obj(
        {"action": {"enum": ["target_added", "target_removed"]}, "target": string},
        {"vantage": string, "spec": {"type": "object"}, "by": string},
    ),
    "incident.action_item": obj(
        {"id": string, "item": count, "title": text, "owner": string},
        {"due": {"type": "string"}, "status": {"enum": ["open", "done"]}},
    ),
}
