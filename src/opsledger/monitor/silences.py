"""Silences on the ledger: ``monitor.silence`` creates one, ``monitor.silence_expired``
ends it early.

A silence mutes the alerts its matchers select (routing still records them: the
ledger keeps every alert, silenced or not) between ``starts_at`` and ``ends_at``. It
carries who made it and why, so "who muted the pager at 3 am" has an answer. Every
monitor folds the same transactions, so a silence made on one reaches them all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from opsledger.core import InvalidInput, format_ts
from opsledger.notify.routing import Matcher, Silence

__all__ = ["fold_silences", "new_silence", "silence_body", "silence_id", "silence_rows"]


def silence_id(matchers: Sequence[Matcher], starts_at: float, author: str) -> str:
    seed = f"{author}|{starts_at}|{'|'.join(map(str, matchers))}"
    return "SIL-" + hashlib.sha256(seed.encode()).hexdigest()[:10]


def _ts(at: float) -> str:
    return format_ts(datetime.fromtimestamp(at, UTC))


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def silence_body(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [m.as_dict() for m in silence.matchers],
        "starts_at": _ts(silence.starts_at),
        "ends_at": _ts(silence.ends_at),
        "created_by": silence.author,
        "comment": silence.comment,
    }


def new_silence(
    matchers: Sequence[Matcher], starts_at: float, ends_at: float, author: str, comment: str
) -> Silence:
    if not matchers:
        raise InvalidInput("a silence needs at least one matcher", field="matchers")
    if ends_at <= starts_at:
        raise InvalidInput("a silence must end after it starts", field="ends_at")
    if not comment.strip():
        raise InvalidInput("say why: a silence needs a comment", field="comment")
    return Silence(
        silence_id(matchers, starts_at, author),
        tuple(matchers),
        starts_at,
        ends_at,
        author,
        comment,
    )


def fold_silences(rows: Iterable[Mapping[str, Any]]) -> dict[str, Silence]:
    """Every silence in ``monitor.silence*`` rows (oldest first), with early expiries
    applied (an expired silence ends at its expiry's time)."""
    silences: dict[str, Silence] = {}
    for row in rows:
        tx = row["transaction"]
        body = tx["body"]
        if tx["type"] == "monitor.silence":
            try:
                matchers = tuple(
                    Matcher(m["name"], m["value"], m.get("op", "=")) for m in body["matchers"]
                )
            except (InvalidInput, KeyError, TypeError):
                continue  # not a silence this monitor understands: ignore rather than crash
            silences[body["id"]] = Silence(
                body["id"],
                matchers,
                _seconds(body["starts_at"]),
                _seconds(body["ends_at"]),
                str(body.get("created_by") or tx.get("actor", "")),
                str(body.get("comment", "")),
            )
        elif tx["type"] == "monitor.silence_expired" and body.get("id") in silences:
            old = silences[body["id"]]
            ended = min(old.ends_at, _seconds(tx["ts"]))
            silences[old.id] = Silence(
                old.id, old.matchers, old.starts_at, ended, old.author, old.comment
            )
    return silences


def silence_rows(silences: Iterable[Silence], now: float) -> list[dict[str, Any]]:
    """For listings: newest first, with a state (active, pending, expired)."""
    out = []
    for s in sorted(silences, key=lambda s: s.starts_at, reverse=True):
        state = "active" if s.active(now) else ("pending" if now < s.starts_at else "expired")
        out.append({**silence_body(s), "state": state, "matchers": [str(m) for m in s.matchers]})
    return out
