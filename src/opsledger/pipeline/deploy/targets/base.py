"""What a strategy needs from a target: start, check, route, measure, stop, remember.

Strategies (``strategies.py``) are written once against ``Target``; the ``process`` and
``script`` targets implement it. (The ``kubernetes`` target delegates the rollout to
``kubectl`` and has its own small driver.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opsledger.pipeline.deploy.switch import PoolStats

__all__ = ["Member", "MemberGone", "Running", "Target"]


class MemberGone(Exception):
    """Raised by ``Target.check`` when a member can never become healthy (it exited), so
    the strategy stops waiting at once instead of until the health timeout."""


@dataclass(frozen=True, slots=True)
class Member:
    """One running instance: ``url`` is where it answers (None when the target has no
    such notion), ``handle`` what the target needs to stop it (a pid, an id)."""

    pool: str
    version: str
    label: str
    url: str | None = None
    handle: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Running:
    """The version a target serves now, as persisted after the last deploy."""

    version: str
    digest: str
    pool: str
    members: tuple[Member, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)


class Target(Protocol):
    def current(self) -> Running | None:
        """What serves traffic now (None on a first deploy)."""

    def launch(self, pool: str, count: int) -> list[Member]:
        """Start ``count`` instances of the new version in ``pool``."""

    def relaunch(self, running: Running, count: int) -> list[Member]:
        """Start ``count`` more instances of an old version (rolling rollback)."""

    def check(self, member: Member) -> str | None:
        """One target-level health check of a member: None if healthy, else why not.
        Raises ``MemberGone`` when waiting longer cannot help."""

    def route(self, pools: Mapping[str, tuple[int, Sequence[Member]]]) -> None:
        """Send traffic to the pools by weight (0: none)."""

    def stats(self, pool: str, seconds: float) -> PoolStats | None:
        """What the switch measured for ``pool``; None if the target measures nothing."""

    def probe_url(self) -> str | None:
        """Where synthetic probe traffic goes (the switch), if anywhere."""

    def stop(self, members: Sequence[Member]) -> None:
        """Stop these instances; never raises for one that is already gone."""

    def save(self, running: Running | None) -> None:
        """Persist what serves now, so the next deploy finds it."""

    def rolled_back(self, reason: str) -> None:
        """Told after an automatic rollback completed (the script target's hook)."""
