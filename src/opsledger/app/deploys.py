"""``opsledger deploy``: compose a deploy from flags or a file, the home's ``deploy``
section and the ledger, then hand it to ``opsledger.pipeline.deploy``.

The home's ``opsledger.yaml`` may hold::

    deploy:
      state_dir: deploy            # relative to the home; where running versions are kept
      environments:
        production: {protected: true}

A protected environment needs a passing release-gate verdict for the artifact's exact
digest; a deploy's own mapping can protect more environments, never fewer. When no
``--commit`` is given, the commits are those of the newest ``release.requested`` for the
digest, so ``deploy.finished`` names what it shipped and DORA's lead time can follow it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from opsledger.app.config import load_section
from opsledger.app.home import Home
from opsledger.client.base import LedgerClient
from opsledger.core import ConfigError, InvalidInput
from opsledger.pipeline.deploy import DeployContext, DeployOutcome, parse_deploy, run_deploy
from opsledger.pipeline.deploy.config import parse_environments
from opsledger.pipeline.deploy.targets.process import alive, stop_all
from opsledger.pipeline.runner import PerCallClient

__all__ = [
    "DeploySection",
    "deploy_down",
    "deploy_status",
    "file_digest",
    "load_deploy_file",
    "load_deploy_section",
    "release_commits",
    "run",
]

_SECTION_KEYS = {"environments", "state_dir"}


class DeploySection:
    """The ``deploy`` section of ``opsledger.yaml``."""

    def __init__(self, protected: frozenset[str], state_dir: Path) -> None:
        self.protected = protected
        self.state_dir = state_dir


def load_deploy_section(home: Home) -> DeploySection:
    path = home.config_path
    raw = load_section(path, "deploy")
    unknown = sorted(set(raw) - _SECTION_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key deploy.{unknown[0]}", key=f"deploy.{unknown[0]}")
    envs = parse_environments(raw.get("environments"), str(path), "deploy.environments")
    state = raw.get("state_dir") or "deploy"
    if not isinstance(state, str):
        raise ConfigError(f"{path}: deploy.state_dir must be a path", key="deploy.state_dir")
    return DeploySection(
        frozenset(name for name, protected in envs.items() if protected),
        (home.path / state).resolve(),
    )


def load_deploy_file(path: Path) -> dict[str, Any]:
    """A deploy mapping from YAML: the mapping itself, or under a top-level ``deploy`` key."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("deploy"), Mapping):
        loaded = loaded["deploy"]
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: the deploy file must be a mapping")
    return dict(loaded)


def file_digest(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read artifact {path}: {exc.strerror}") from exc
    return "sha256:" + hashlib.sha256(data).hexdigest()


def release_commits(client: LedgerClient, digest: str) -> list[str]:
    """The commits of the newest ``release.requested`` for ``digest`` (empty if none)."""
    rows = client.list_transactions(
        {"type": "release.requested", "subject": f"artifact:{digest}", "order": "desc", "limit": 1}
    )
    if not rows:
        return []
    return [str(c) for c in rows[0]["transaction"]["body"].get("commits", [])]


def run(
    home: Home,
    raw: Mapping[str, Any],
    *,
    where: str,
    version: str,
    digest: str,
    workdir: Path,
    commits: list[str] | None,
    actor: str | None,
    fixes: str | None,
    log: Callable[[str], None],
) -> DeployOutcome:
    section = load_deploy_section(home)
    spec = parse_deploy(raw, where)
    # a client per call: a canary may hold for minutes, and an embedded client would keep
    # the home's writer lock (and every other writer out) all that time
    client = PerCallClient(home.client)
    try:
        ctx = DeployContext(
            client=client,
            signer=home.signer(actor),
            version=version,
            artifact_digest=digest,
            commits=commits if commits is not None else release_commits(client, digest),
            workdir=workdir,
            log=log,
            cancel=threading.Event(),
            state_dir=section.state_dir,
            protected_environments=section.protected,
            fixes=fixes,
        )
        return run_deploy(spec, ctx)
    finally:
        client.close()


def _state_dir(home: Home, service: str, environment: str) -> Path:
    return load_deploy_section(home).state_dir / service / environment


def deploy_status(home: Home, service: str, environment: str) -> dict[str, Any]:
    """What the ``process`` (or ``script``) target says runs now."""
    where = _state_dir(home, service, environment)
    out: dict[str, Any] = {"service": service, "environment": environment, "active": None}
    state = where / "state.json"
    script = where / "script.json"
    if state.exists():
        active = json.loads(state.read_text()).get("active")
        if active:
            active = {
                **{k: active[k] for k in ("version", "digest", "pool")},
                "instances": [
                    {**m, "alive": alive(int(m["pid"]))} for m in active.get("members", [])
                ],
            }
        out["active"] = active
    elif script.exists():
        out["active"] = json.loads(script.read_text()) or None
    switch = where / "switch.json"
    if switch.exists():
        info = json.loads(switch.read_text())
        out["switch"] = {"url": info["url"], "pid": info["pid"], "alive": alive(int(info["pid"]))}
    return out


def deploy_down(home: Home, service: str, environment: str) -> list[str]:
    """Stop everything the ``process`` target runs for this service and environment."""
    return stop_all(_state_dir(home, service, environment))
