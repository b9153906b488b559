"""Rolling, blue-green and canary, written once against the ``Target`` protocol.

Every strategy ends in exactly one of three states, which ``run`` records:

- ``success``: the new version serves all traffic and the old one is stopped;
- ``rolled_back``: a gate failed (or the run was cancelled), traffic is back on the old
  version (if there was one) and every new instance is stopped;
- ``failure``: something other than health went wrong (the target refused, the switch is
  down); the old version is left serving if it still does.

Pools are colors: the new version gets the color the current one does not have
(``blue``/``green``), in every strategy, so a canary that is promoted is simply the new
color and the next deploy alternates again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from opsledger.pipeline.deploy.config import DeploySettings
from opsledger.pipeline.deploy.health import hold, wait_ready
from opsledger.pipeline.deploy.targets.base import Member, Running, Target

__all__ = ["Result", "blue_green", "canary", "other_pool", "rolling", "run_strategy"]


@dataclass(frozen=True, slots=True)
class Result:
    status: str  # success | rolled_back
    reason: str
    running: Running | None = None


def other_pool(current: Running | None) -> str:
    return "green" if current is not None and current.pool == "blue" else "blue"


@dataclass
class _Deploy:
    settings: DeploySettings
    target: Target
    version: str
    digest: str
    extra: dict[str, object]
    cancel: threading.Event
    log: Callable[[str], None]

    @property
    def window(self) -> float:
        metrics = self.settings.health.metrics
        return metrics.window_s if metrics is not None else 0.0

    def instances(self) -> int:
        return getattr(self.settings.target, "instances", 1)

    def running(self, pool: str, members: list[Member]) -> Running:
        return Running(self.version, self.digest, pool, tuple(members), dict(self.extra))

    @staticmethod
    def running_old(current: Running, members: list[Member]) -> Running:
        return Running(current.version, current.digest, current.pool, tuple(members), current.extra)

    def back_to(self, current: Running | None, new: list[Member], reason: str) -> Result:
        """Traffic to the old version, new instances stopped, the target told."""
        self.log(f"rolling back: {reason}")
        if current is not None and current.members:
            self.target.route({current.pool: (100, current.members)})
        else:
            self.target.route({})
        self.target.stop(new)
        self.target.rolled_back(reason)
        return Result("rolled_back", reason, current)

    def ready(self, members: list[Member]) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        return wait_ready(self.target, self.settings.health, members, self.cancel)

    def hold(self, pool: str, members: list[Member], seconds: float) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        return hold(
            self.target,
            self.settings.health,
            pool=pool,
            members=members,
            seconds=seconds,
            cancel=self.cancel,
        )


def blue_green(d: _Deploy) -> Result:
    current = d.target.current()
    pool = other_pool(current)
    new = d.target.launch(pool, d.instances())
    reason = d.ready(new)
    if reason is not None:
        return d.back_to(current, new, reason)
    routes: dict[str, tuple[int, tuple[Member, ...] | list[Member]]] = {pool: (100, new)}
    if current is not None:
        routes[current.pool] = (0, current.members)
    d.target.route(routes)
    reason = d.hold(pool, new, d.window)
    if reason is not None:
        return d.back_to(current, new, reason)
    d.target.route({pool: (100, new)})
    if current is not None:
        d.target.stop(current.members)
    return Result("success", f"{pool} serves {d.version}", d.running(pool, new))


def canary(d: _Deploy) -> Result:
    current = d.target.current()
    if current is None or not current.members:
        d.log("no running version: the first canary deploy goes straight to blue-green")
        return blue_green(d)
    pool = other_pool(current)
    steps = d.settings.canary
    new = d.target.launch(pool, min(steps.instances, d.instances()))
    reason = d.ready(new)
    if reason is not None:
        return d.back_to(current, new, reason)
    for weight in steps.steps:
        if weight == 100 and len(new) < d.instances():
            more = d.target.launch(pool, d.instances() - len(new))
            new += more
            reason = d.ready(more)
            if reason is not None:
                return d.back_to(current, new, reason)
        d.target.route({pool: (weight, new), current.pool: (100 - weight, current.members)})
        d.log(f"canary at {weight}%: holding {steps.hold_s:g}s")
        reason = d.hold(pool, new, steps.hold_s)
        if reason is not None:
            return d.back_to(current, new, f"canary at {weight}%: {reason}")
    d.target.route({pool: (100, new)})
    d.target.stop(current.members)
    return Result("success", f"canary promoted: {pool} serves {d.version}", d.running(pool, new))


def rolling(d: _Deploy) -> Result:
    current = d.target.current()
    if current is None or not current.members:
        d.log("no running version: starting every instance of the first version")
        return blue_green(d)
    pool = other_pool(current)
    old = list(current.members)
    replaced: list[Member] = []
    new: list[Member] = []

    def undo(reason: str) -> Result:
        d.log(f"rolling back: {reason}")
        restored = d.target.relaunch(current, len(replaced)) if replaced else []
        if restored and d.ready(restored) is not None:
            d.log("some restarted old instances are not healthy yet")
        members = old + restored
        d.target.route({current.pool: (100, members)} if members else {})
        d.target.stop(new)
        d.target.rolled_back(reason)
        return Result("rolled_back", reason, d.running_old(current, members))

    for index in range(d.instances()):
        if d.cancel.is_set():
            return undo("cancelled")
        started = d.target.launch(pool, 1)
        new += started
        reason = d.ready(started)
        if reason is not None:
            return undo(f"instance {index + 1} of {d.instances()}: {reason}")
        victim = old.pop(0) if old else None
        d.target.route({pool: (len(new), new), current.pool: (len(old), old)})
        if victim is not None:
            d.target.stop([victim])
            replaced.append(victim)
        reason = d.hold(pool, new, d.window)
        if reason is not None:
            return undo(f"instance {index + 1} of {d.instances()}: {reason}")
    if old:  # the old version had more instances than the new one wants
        d.target.route({pool: (100, new)})
        d.target.stop(old)
    return Result("success", f"{len(new)} instances of {d.version} serve", d.running(pool, new))


STRATEGIES: dict[str, Callable[[_Deploy], Result]] = {
    "blue-green": blue_green,
    "canary": canary,
    "rolling": rolling,
}


def run_strategy(
    settings: DeploySettings,
    target: Target,
    *,
    version: str,
    digest: str,
    extra: dict[str, object],
    cancel: threading.Event,
    log: Callable[[str], None],
) -> Result:
    """Run the configured strategy and persist what serves afterwards."""
    deploy = _Deploy(settings, target, version, digest, extra, cancel, log)
    result = STRATEGIES[settings.strategy](deploy)
    if result.status == "success" or result.running is not None:
        target.save(result.running)
    return result
