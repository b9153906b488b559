"""Health gates: is the new version healthy, and does it stay healthy under traffic?

Three kinds of check, all optional and combined with "all must pass":

- the target's own check of each new instance (the ``process`` target GETs
  ``health.http.path`` and matches status and body; the ``script`` target runs its
  ``health`` hook);
- ``health.command``: any command, run per instance with ``OPSLEDGER_URL`` (the instance),
  ``OPSLEDGER_SWITCH_URL``, ``OPSLEDGER_VERSION`` and ``OPSLEDGER_COLOR`` set; exit 0 is healthy;
- ``health.metrics``: thresholds on the error rate and p95 latency the switch measured for
  the new pool over the hold window, with optional synthetic probe traffic.

``wait_ready`` waits up to ``health.timeout`` for new instances to pass (they need time to
start); ``hold`` keeps checking them for a window after traffic moved, and fails as soon
as one check fails. Each returns None when healthy or a reason a person understands.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Sequence

import httpx

from opsledger.pipeline.deploy.config import HealthSettings, MetricSettings
from opsledger.pipeline.deploy.switch import PoolStats
from opsledger.pipeline.deploy.targets.base import Member, MemberGone, Target

__all__ = ["Prober", "check_metrics", "hold", "run_command_check", "wait_ready"]

_COMMAND_TIMEOUT_S = 30.0


def run_command_check(
    command: Sequence[str], member: Member, switch_url: str | None, timeout: float
) -> str | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_KEY")}
    env.update(
        {
            "OPSLEDGER_URL": member.url or "",
            "OPSLEDGER_SWITCH_URL": switch_url or "",
            "OPSLEDGER_VERSION": member.version,
            "OPSLEDGER_COLOR": member.pool,
        }
    )
    try:
        done = subprocess.run(
            list(command),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"health command {command[0]} timed out after {timeout:g}s for {member.label}"
    except OSError as exc:
        return f"health command {command[0]} could not start: {exc}"
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        return f"health command {command[0]} exited {done.returncode} for {member.label}" + (
            f": {tail}" if tail else ""
        )
    return None


def _check_all(target: Target, health: HealthSettings, members: Sequence[Member]) -> str | None:
    """One round of checks over every member; raises MemberGone from the target."""
    for member in members:
        reason = target.check(member)
        if reason is None and health.command is not None:
            reason = run_command_check(
                health.command,
                member,
                target.probe_url(),
                min(_COMMAND_TIMEOUT_S, max(health.timeout_s, 1.0)),
            )
        if reason is not None:
            return reason
    return None


def wait_ready(
    target: Target, health: HealthSettings, members: Sequence[Member], cancel: threading.Event
) -> str | None:
    """Wait until every member passes, up to ``health.timeout``."""
    deadline = time.monotonic() + health.timeout_s
    while True:
        try:
            reason = _check_all(target, health, members)
        except MemberGone as gone:
            return str(gone)
        if reason is None:
            return None
        if time.monotonic() >= deadline:
            return f"not healthy after {health.timeout_s:g}s: {reason}"
        if cancel.wait(health.interval_s):
            return "cancelled"


class Prober:
    """Synthetic GETs through the switch at ``rps`` while a window is held, so the metric
    gate has traffic to judge even when no user is calling."""

    def __init__(self, url: str, path: str, rps: float) -> None:
        self.url, self.path, self.rps = url.rstrip("/"), path, rps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deploy-probe", daemon=True)
        self.sent = 0

    def _run(self) -> None:
        interval = 1.0 / self.rps
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                # a failure is counted against the pool by the switch; we only drive
                with contextlib.suppress(httpx.HTTPError):
                    client.get(self.url + self.path)
                self.sent += 1
                self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def check_metrics(stats: PoolStats, metrics: MetricSettings) -> str | None:
    window = f"{metrics.window_s:g}s"
    if stats.requests < metrics.min_requests:
        return (
            f"{stats.pool} served {stats.requests} requests in {window}, fewer than the "
            f"{metrics.min_requests} needed to judge it"
        )
    if metrics.max_error_rate is not None and stats.error_rate > metrics.max_error_rate:
        return (
            f"{stats.pool} error rate {stats.error_rate:.3f} ({stats.errors} of "
            f"{stats.requests}) over {window} is above {metrics.max_error_rate:g}"
        )
    if metrics.max_latency_p95_ms is not None and stats.p95_ms > metrics.max_latency_p95_ms:
        return (
            f"{stats.pool} latency p95 {stats.p95_ms:.1f} ms over {window} is above "
            f"{metrics.max_latency_p95_ms:g} ms"
        )
    return None


def hold(
    target: Target,
    health: HealthSettings,
    *,
    pool: str,
    members: Sequence[Member],
    seconds: float,
    cancel: threading.Event,
) -> str | None:
    """Keep checking ``members`` for ``seconds`` while they take traffic, then judge the
    switch's measurements of ``pool`` over that window."""
    metrics = health.metrics
    probe_url = target.probe_url()
    prober = (
        Prober(probe_url, metrics.probe_path, metrics.probe_rps)
        if metrics is not None and metrics.probe_rps > 0 and probe_url
        else None
    )
    started = time.monotonic()
    deadline = started + seconds
    if prober is not None:
        prober.__enter__()
    try:
        while True:
            try:
                reason = _check_all(target, health, members)
            except MemberGone as gone:
                reason = str(gone)
            if reason is not None:
                return f"unhealthy while taking traffic: {reason}"
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if cancel.wait(min(health.interval_s, left)):
                return "cancelled"
    finally:
        if prober is not None:
            prober.__exit__()
    if metrics is None:
        return None
    stats = target.stats(pool, max(seconds, time.monotonic() - started))
    if stats is None:
        return None
    return check_metrics(stats, metrics)
