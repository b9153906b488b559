"""The ``script`` target: the user's own hooks, for any platform (a load balancer's API, a
service mesh, a PaaS CLI). The strategies call them in order; each hook gets its context in
environment variables, so one script can serve every strategy:

============  =========================================================================
hook          when, with which variables (besides OPSLEDGER_SERVICE, _ENVIRONMENT, _DIGEST)
============  =========================================================================
``deploy``    start one instance: OPSLEDGER_VERSION, OPSLEDGER_COLOR, OPSLEDGER_INSTANCE
``health``    is that instance healthy? exit 0 = yes; same variables
``switch``    send OPSLEDGER_WEIGHT percent of traffic to OPSLEDGER_COLOR (one call per color)
``stop``      stop one instance; same variables as ``deploy``
``rollback``  after an automatic rollback: OPSLEDGER_REASON, OPSLEDGER_VERSION (the failed one)
============  =========================================================================

A hook that exits non-zero fails the deploy (``health``: the gate). Hooks run without a
shell (write ``sh -c '...'`` for one), in the job's working directory, with a timeout, and
never see the signing key. What runs now is kept in ``<state>/<service>/<env>/script.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from opsledger.core import UpstreamError
from opsledger.pipeline.deploy.config import ScriptSettings
from opsledger.pipeline.deploy.switch import PoolStats
from opsledger.pipeline.deploy.targets.base import Member, Running

__all__ = ["ScriptTarget"]


class ScriptTarget:
    def __init__(
        self,
        settings: ScriptSettings,
        *,
        service: str,
        environment: str,
        version: str,
        digest: str,
        workdir: Path,
        state_root: Path,
        log: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.service, self.environment = service, environment
        self.version, self.digest = version, digest
        self.workdir = workdir
        self.state = state_root / service / environment / "script.json"
        self.log = log
        self._counter = 0

    def _hook(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_KEY")}
        full.update(self.settings.env)
        full.update(
            {
                "OPSLEDGER_SERVICE": self.service,
                "OPSLEDGER_ENVIRONMENT": self.environment,
                "OPSLEDGER_DIGEST": self.digest,
                **env,
            }
        )
        try:
            done = subprocess.run(
                list(argv),
                cwd=self.workdir,
                env=full,
                capture_output=True,
                text=True,
                timeout=self.settings.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise UpstreamError(
                f"{name} hook timed out after {self.settings.timeout_s:g}s"
            ) from exc
        except OSError as exc:
            raise UpstreamError(f"{name} hook {argv[0]} could not start: {exc}") from exc
        output = (done.stdout + done.stderr).strip()
        for line in output.splitlines()[-20:]:
            self.log(f"[{name}] {line}")
        return done.returncode, " | ".join(output.splitlines()[-3:])

    def _must(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        code, tail = self._hook(name, argv, env)
        if code != 0:
            raise UpstreamError(f"{name} hook exited {code}" + (f": {tail}" if tail else ""))

    @staticmethod
    def _env(member: Member) -> dict[str, str]:
        return {
            "OPSLEDGER_VERSION": member.version,
            "OPSLEDGER_COLOR": member.pool,
            "OPSLEDGER_INSTANCE": str(member.handle.get("instance", 0)),
        }

    def current(self) -> Running | None:
        if not self.state.exists():
            return None
        data = json.loads(self.state.read_text())
        if not data:
            return None
        members = tuple(
            Member(
                pool=data["pool"],
                version=data["version"],
                label=f"{data['pool']}#{i}",
                handle={"instance": i},
            )
            for i in data.get("instances", [])
        )
        return Running(data["version"], data["digest"], data["pool"], members)

    def _launch(self, pool: str, version: str, count: int) -> list[Member]:
        members = []
        for _ in range(count):
            self._counter += 1
            member = Member(
                pool=pool,
                version=version,
                label=f"{pool}#{self._counter}",
                handle={"instance": self._counter},
            )
            self._must("deploy", self.settings.deploy, self._env(member))
            members.append(member)
        return members

    def launch(self, pool: str, count: int) -> list[Member]:
        return self._launch(pool, self.version, count)

    def relaunch(self, running: Running, count: int) -> list[Member]:
        return self._launch(running.pool, running.version, count)

    def check(self, member: Member) -> str | None:
        if self.settings.health is None:
            return None
        code, tail = self._hook("health", self.settings.health, self._env(member))
        if code != 0:
            return f"health hook exited {code} for {member.label}" + (f": {tail}" if tail else "")
        return None

    def route(self, pools: Mapping[str, tuple[int, Sequence[Member]]]) -> None:
        if self.settings.switch is None:
            return
        total = sum(w for w, _ in pools.values()) or 1
        for pool, (weight, members) in pools.items():
            version = members[0].version if members else self.version
            self._must(
                "switch",
                self.settings.switch,
                {
                    "OPSLEDGER_COLOR": pool,
                    "OPSLEDGER_WEIGHT": str(round(100 * weight / total)),
                    "OPSLEDGER_VERSION": version,
                },
            )

    def stats(self, pool: str, seconds: float) -> PoolStats | None:
        return None

    def probe_url(self) -> str | None:
        return None

    def stop(self, members: Sequence[Member]) -> None:
        if self.settings.stop is None:
            return
        for member in members:
            code, tail = self._hook("stop", self.settings.stop, self._env(member))
            if code != 0:
                self.log(f"stop hook exited {code} for {member.label}: {tail}")

    def save(self, running: Running | None) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        data = (
            {
                "version": running.version,
                "digest": running.digest,
                "pool": running.pool,
                "instances": [m.handle.get("instance", 0) for m in running.members],
            }
            if running is not None
            else {}
        )
        self.state.write_text(json.dumps(data))

    def rolled_back(self, reason: str) -> None:
        if self.settings.rollback is None:
            return
        code, tail = self._hook(
            "rollback",
            self.settings.rollback,
            {"OPSLEDGER_REASON": reason, "OPSLEDGER_VERSION": self.version},
        )
        if code != 0:
            self.log(f"rollback hook exited {code}: {tail}")
