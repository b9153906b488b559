"""The parsed form of a pipeline: jobs, steps, secrets by reference, evidence, and the
DAG queries the runner needs. Built by ``spec.parse_pipeline``; see that module for the
file format."""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from opsledger.core import ConfigError
from opsledger.pipeline.conditions import Condition, parse_condition

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_MATRIX",
    "MAX_RETRIES",
    "SEVERITIES",
    "STAGES",
    "EvidenceSpec",
    "JobDef",
    "PipelineSpec",
    "SecretRef",
    "Step",
    "find_cycle",
    "parse_duration",
]

STAGES = ("plan", "code", "build", "test", "release", "deploy", "operate", "monitor")
"""The eight phases, in the only order a pipeline may list them."""

DEFAULT_TIMEOUT = 3600.0
MAX_RETRIES = 10
MAX_MATRIX = 256
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")
SEVERITIES = ("critical", "high", "medium", "low")


@dataclass(frozen=True)
class Step:
    run: str
    name: str


@dataclass(frozen=True)
class SecretRef:
    """Where a secret's value lives; the value itself is never part of a spec."""

    source: Literal["env", "file"]
    ref: str

    def __str__(self) -> str:
        return f"{self.source}:{self.ref}"

    def resolve(self, environ: Mapping[str, str]) -> str:
        """The value, read when the job is dispatched. Errors name the reference only."""
        refuse_signing_key(self.source, self.ref, environ)
        if self.source == "env":
            value = environ.get(self.ref)
            if value is None:
                raise ConfigError(f"environment variable {self.ref} is not set")
            return value
        try:
            return Path(self.ref).read_text().removesuffix("\n")
        except OSError as exc:
            raise ConfigError(f"cannot read {self.ref}: {exc.strerror or exc}") from None


SIGNING_KEY_ENV = frozenset({"OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE"})
"""Where a runner or worker finds the key it signs with: never handed to a job."""


def refuse_signing_key(source: str, ref: str, environ: Mapping[str, str]) -> None:
    """A secret reference may not name the signing key of whoever runs the job (its
    variable, its key file, or any key in an opsledger home's ``keys/`` folder): with
    it, a pipeline author could sign evidence as the CI identity."""
    if source == "env" and ref in SIGNING_KEY_ENV:
        raise ConfigError(f"{ref} is the runner's signing key and cannot be a job's secret")
    if source != "file":
        return
    path = Path(ref).expanduser().resolve()
    key_file = environ.get("OPSLEDGER_KEY_FILE")
    in_home_keys = path.parent.name == "keys" and (path.parent.parent / "opsledger.yaml").exists()
    if in_home_keys or (key_file and Path(key_file).expanduser().resolve() == path):
        raise ConfigError(f"{ref} is a signing key and cannot be a job's secret")


@dataclass(frozen=True)
class EvidenceSpec:
    """How a job's result becomes typed evidence.

    ``build``: ``artifact`` (a path or glob among the job's artifacts) → ``build.finished``
    with its digest. ``test``: the last step's output through ``parser`` (``counts``,
    ``exit-code``) → ``test.finished``. ``scan``: through ``bandit``/``pip-audit`` →
    ``scan.finished``; ``fail_on`` (a severity) fails the job at that level or above.
    For test and scan, ``artifact`` names the artifact under test (default: the only
    artifact the job received from the jobs it needs)."""

    type: Literal["build", "test", "scan"]
    parser: str | None = None
    artifact: str | None = None
    name: str | None = None
    fail_on: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class JobDef:
    """One job after matrix expansion. ``name`` is unique in its pipeline."""

    name: str
    stage: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, SecretRef] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    retries: int = 0
    condition: Condition | None = None
    matrix: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()
    evidence: EvidenceSpec | None = None
    deploy: Any = None  # a pipeline.deploy.DeploySpec
    base: str = ""  # the name before matrix expansion
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON form for run state and for workers (no secret values: references)."""
        return {
            "name": self.name,
            "stage": self.stage,
            "steps": [{"run": s.run, "name": s.name} for s in self.steps],
            "needs": list(self.needs),
            "env": dict(self.env),
            "secrets": {k: str(v) for k, v in self.secrets.items()},
            "timeout": self.timeout,
            "retries": self.retries,
            "if": self.condition.text if self.condition else None,
            "matrix": dict(self.matrix),
            "artifacts": list(self.artifacts),
            "evidence": self.evidence.to_dict() if self.evidence else None,
            "base": self.base,
            "line": self.line,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobDef:
        """The inverse of ``to_dict`` (``deploy`` does not travel: the runner deploys)."""
        secrets = {}
        for key, ref in dict(data.get("secrets") or {}).items():
            source, _, path = str(ref).partition(":")
            secrets[key] = SecretRef("file" if source == "file" else "env", path)
        where = f"job {data.get('name')}"
        cond = data.get("if")
        evidence = data.get("evidence")
        return cls(
            name=str(data["name"]),
            stage=str(data["stage"]),
            steps=tuple(Step(str(s["run"]), str(s["name"])) for s in data["steps"]),
            needs=tuple(data.get("needs") or ()),
            env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
            secrets=secrets,
            timeout=float(data.get("timeout", DEFAULT_TIMEOUT)),
            retries=int(data.get("retries", 0)),
            condition=parse_condition(str(cond), where) if cond else None,
            matrix={str(k): str(v) for k, v in dict(data.get("matrix") or {}).items()},
            artifacts=tuple(data.get("artifacts") or ()),
            evidence=EvidenceSpec(**evidence) if evidence else None,
            base=str(data.get("base") or data["name"]),
            line=int(data.get("line", 0)),
        )


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: jobs in file order, each with its ``needs`` resolved."""

    name: str
    source: str
    digest: str  # sha256:<hex> of the file's bytes
    jobs: Mapping[str, JobDef]
    stages: tuple[str, ...]
    vars: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    root: Path | None = None  # the project directory (the file's folder)

    def order(self) -> list[str]:
        """Job names in a topological order (file order among ready jobs)."""
        return list(self._order)

    @cached_property
    def _order(self) -> tuple[str, ...]:
        index = {name: i for i, name in enumerate(self.jobs)}
        waiting = {name: len(job.needs) for name, job in self.jobs.items()}
        users: dict[str, list[str]] = {name: [] for name in self.jobs}
        for name, job in self.jobs.items():
            for dep in job.needs:
                if dep not in users:
                    raise ConfigError(f"{self.source}: {name} needs unknown job {dep}")
                users[dep].append(name)
        ready = [index[n] for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        names = list(self.jobs)
        result: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)]
            result.append(name)
            for user in users[name]:
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready, index[user])
        if len(result) != len(names):
            raise ConfigError(f"{self.source}: the jobs' needs form a cycle")
        return tuple(result)

    def ancestors(self, name: str) -> list[str]:
        """Every job ``name`` needs, directly or through others, in topological order."""
        seen: set[str] = set()
        stack = list(self.jobs[name].needs)
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(self.jobs[dep].needs)
        position = self._position
        return sorted(seen, key=position.__getitem__)

    @cached_property
    def _position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self._order)}


def parse_duration(value: Any, where: str) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or a number of seconds → seconds (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: a duration like 30s, 5m or 1h is required")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if match is None:
            raise ConfigError(f"{where}: a duration like 30s, 5m or 1h is required")
        number = float(match.group(1))
        seconds = number * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    if not 0 < seconds <= 7 * 86400:
        raise ConfigError(f"{where}: the duration must be above 0 and at most 7 days")
    return seconds


def find_cycle(jobs: Mapping[str, JobDef]) -> list[str] | None:
    """A cycle of ``needs`` (``[a, b, a]``), or None: an iterative depth-first walk, so a
    10,000-job chain does not hit Python's recursion limit."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for start in jobs:
        if state.get(start) == 2:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = []
        while stack:
            name, index = stack.pop()
            if index == 0:
                if state.get(name) == 1:
                    return [*trail[trail.index(name) :], name]
                if state.get(name) == 2:
                    continue
                state[name] = 1
                trail.append(name)
            needs = jobs[name].needs
            if index < len(needs):
                stack.append((name, index + 1))
                stack.append((needs[index], 0))
            else:
                state[name] = 2
                trail.pop()
    return None
