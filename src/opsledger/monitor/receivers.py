"""Who hears about alerts, and what other monitors see.

``Receiver`` pairs a named channel with its ``Notifier``; ``record_notified`` puts the
final outcome of each notification on the ledger. ``peer_firing`` folds the ledger's
alert history into the vantages reporting each alert, for rules labelled ``agree: N``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opsledger.client.base import Recorder
from opsledger.core import Subject
from opsledger.notify import Notification, Notifier

__all__ = ["Receiver", "agree_count", "peer_firing", "record_notified", "subject_id"]


@dataclass
class Receiver:
    """A named channel and the notifier (queue, retries, delivery log) that feeds it.
    ``per_alert`` receivers (PagerDuty) get one notification per alert of a group, so
    their dedup key is the alert's fingerprint."""

    name: str
    notifier: Notifier
    per_alert: bool = False


def record_notified(
    recorder: Recorder,
    receiver: str,
    *,
    kind: str,
    notification: Notification,
    outcome: str,
    attempts: int,
) -> None:
    """``monitor.notified``: the final outcome of one notification to one receiver (not
    every retry), so who was told what, and whether it arrived, is on the ledger."""
    refs = list(notification.refs)
    subject = (
        Subject("alert", subject_id(refs[0]))
        if len(refs) == 1
        else Subject("notification", notification.key or "none")
    )
    recorder.record(
        "monitor.notified",
        subject,
        {
            "receiver": receiver,
            "kind": kind,
            "event": notification.event,
            "title": notification.title[:500],
            "outcome": outcome,
            "attempts": attempts,
            "alerts": refs[:100],
            **({"key": notification.key} if notification.key else {}),
        },
    )


def subject_id(fingerprint: str) -> str:
    return (
        fingerprint if len(fingerprint) <= 200 else hashlib.sha256(fingerprint.encode()).hexdigest()
    )


def agree_count(labels: Mapping[str, str]) -> int:
    try:
        return max(1, int(labels.get("agree", "1")))
    except ValueError:
        return 1


def peer_firing(rows: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Fold ``alert.fired``/``alert.resolved`` rows (oldest first) into the vantages
    that currently report each fingerprint firing."""
    firing: dict[str, set[str]] = {}
    for row in rows:
        tx = row["transaction"]
        body = tx["body"]
        key, vantage = body.get("fingerprint"), body.get("vantage")
        if not key or not vantage:
            continue
        if tx["type"] == "alert.fired":
            firing.setdefault(key, set()).add(vantage)
        elif tx["type"] == "alert.resolved":
            firing.get(key, set()).discard(vantage)
    return {k: v for k, v in firing.items() if v}
