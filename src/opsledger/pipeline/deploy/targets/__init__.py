"""Deploy targets: where a version runs (local processes, user scripts, Kubernetes)."""

from __future__ import annotations

from opsledger.pipeline.deploy.targets.base import Member, MemberGone, Running, Target

__all__ = ["Member", "MemberGone", "Running", "Target"]
