"""The clock protocol: time is injected, never read inside rules or verification."""

from __future__ import annotations

import datetime as _dt
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> _dt.datetime:
        """The current time, timezone-aware UTC."""


class SystemClock:
    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.UTC)


class FixedClock:
    """A clock for tests: starts at ``start`` and moves only when told."""

    def __init__(self, start: _dt.datetime) -> None:
        self._now = start

    def now(self) -> _dt.datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += _dt.timedelta(seconds=seconds)
