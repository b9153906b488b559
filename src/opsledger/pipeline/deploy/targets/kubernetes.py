"""The ``kubernetes`` target: ``kubectl apply``, ``kubectl rollout status``, and
``kubectl rollout undo`` when the rollout or a health gate fails.

Kubernetes already replaces pods one by one, health-gated by their readiness probes, so
this target supports the ``rolling`` strategy and lets the Deployment do it; blue-green and
canary on a cluster belong to a service mesh or ingress, which the ``script`` target drives.

The command lines, in order (``KUBECTL`` is ``kubectl`` plus ``--context`` and
``--namespace`` when configured; ``{version}`` and ``{digest}`` in ``image`` are filled in):

1. ``KUBECTL apply -f MANIFEST``
2. ``KUBECTL set image deployment/NAME CONTAINER=IMAGE`` (only with ``image``)
3. ``KUBECTL rollout status deployment/NAME --timeout=Ns``
4. ``health.command`` (optional), then, on any failure in 3 or 4:
   ``KUBECTL rollout undo deployment/NAME`` and ``KUBECTL rollout status ...`` again.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from opsledger.core import ConfigError, UpstreamError
from opsledger.pipeline.deploy.config import HealthSettings, KubernetesSettings
from opsledger.pipeline.deploy.health import run_command_check
from opsledger.pipeline.deploy.strategies import Result
from opsledger.pipeline.deploy.targets.base import Member

__all__ = ["kubectl_base", "run_kubernetes"]


def kubectl_base(settings: KubernetesSettings) -> list[str]:
    argv = [settings.kubectl]
    if settings.context:
        argv += ["--context", settings.context]
    if settings.namespace:
        argv += ["--namespace", settings.namespace]
    return argv


def _run(
    argv: Sequence[str], cwd: Path, timeout: float, log: Callable[[str], None]
) -> tuple[int, str]:
    log("$ " + " ".join(argv))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLEDGER_KEY")}
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} {argv[1] if len(argv) > 1 else ''} timed out"
    except OSError as exc:
        raise UpstreamError(f"cannot run {argv[0]}: {exc}") from exc
    output = (done.stdout + done.stderr).strip()
    for line in output.splitlines()[-20:]:
        log(line)
    return done.returncode, " | ".join(output.splitlines()[-3:])


def run_kubernetes(
    settings: KubernetesSettings,
    health: HealthSettings,
    *,
    version: str,
    digest: str,
    workdir: Path,
    log: Callable[[str], None],
) -> Result:
    base = kubectl_base(settings)
    deployment = f"deployment/{settings.deployment}"
    slack = settings.timeout_s + 30
    status = [*base, "rollout", "status", deployment, f"--timeout={int(settings.timeout_s)}s"]
    code, tail = _run([*base, "apply", "-f", settings.manifest], workdir, slack, log)
    if code != 0:
        raise UpstreamError(f"kubectl apply exited {code}: {tail}")
    if settings.image:
        try:
            image = settings.image.format(version=version, digest=digest)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"target.image: unknown placeholder {exc} (known: version, digest)",
                key="target.image",
            ) from exc
        container = settings.container or settings.deployment
        code, tail = _run(
            [*base, "set", "image", deployment, f"{container}={image}"], workdir, slack, log
        )
        if code != 0:
            raise UpstreamError(f"kubectl set image exited {code}: {tail}")
    code, tail = _run(status, workdir, slack, log)
    reason = None if code == 0 else f"kubectl rollout status exited {code}: {tail}"
    if reason is None and health.command is not None:
        member = Member(pool="kubernetes", version=version, label=deployment)
        reason = run_command_check(health.command, member, None, max(health.timeout_s, 1.0))
    if reason is None:
        return Result("success", f"{deployment} rolled out {version}")
    log(f"rolling back: {reason}")
    code, tail = _run([*base, "rollout", "undo", deployment], workdir, slack, log)
    if code != 0:
        raise UpstreamError(f"{reason}; and kubectl rollout undo exited {code}: {tail}")
    _run(status, workdir, slack, log)
    return Result("rolled_back", reason)
