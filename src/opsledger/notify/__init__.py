"""Notifications: tell people when something needs them (a failed verdict, say).

Deliveries to webhooks (our JSON) and Slack run on background threads with retries and
backoff, every attempt logged and kept in ``<home>/notifications.jsonl``; a notification
failure never blocks or fails the ledger write that caused it.
"""

from opsledger.notify.delivery import (
    DELIVERY_LOG,
    Notification,
    Notifier,
    Severity,
    WebhookTarget,
    load_notify_targets,
    read_delivery_log,
    redact_url,
    slack_payload,
    verdict_notification,
    webhook_payload,
)

__all__ = [
    "DELIVERY_LOG",
    "Notification",
    "Notifier",
    "Severity",
    "WebhookTarget",
    "load_notify_targets",
    "read_delivery_log",
    "redact_url",
    "slack_payload",
    "verdict_notification",
    "webhook_payload",
]
