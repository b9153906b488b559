"""``opsledger deploy``: deploy a version with a strategy and automatic rollback, outside a
pipeline run (from a laptop, or as one step of any CI); ``deploy status`` and ``deploy down``
show and stop what the ``process`` target runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from opsledger.app.deploys import (
    deploy_down,
    deploy_status,
    file_digest,
    load_deploy_file,
    run,
)
from opsledger.cli._render import kv_table, print_json, say
from opsledger.cli._state import get_state
from opsledger.core import InvalidInput

__all__ = ["deploy_app", "register"]

deploy_app = typer.Typer(invoke_without_command=True)


def _from_flags(
    *,
    service: str | None,
    env: str | None,
    strategy: str | None,
    target: str,
    command: str | None,
    instances: int,
    health_path: str | None,
) -> dict[str, Any]:
    if not service or not env or not strategy:
        raise InvalidInput("give --service, --env and --strategy, or --config FILE")
    if target != "process":
        raise InvalidInput(
            f"--target {target} needs its hooks or manifest: write them in a --config file"
        )
    if not command:
        raise InvalidInput(
            "--target process needs --command, e.g. 'python {artifact} --port {port}'"
        )
    raw: dict[str, Any] = {
        "service": service,
        "environment": env,
        "strategy": strategy,
        "target": {"kind": "process", "command": command, "instances": instances},
    }
    if health_path:
        raw["health"] = {"http": {"path": health_path}}
    return raw


@deploy_app.callback()
def deploy(
    ctx: typer.Context,
    *,
    config: Annotated[
        Path | None, typer.Option("--config", help="A YAML file with the deploy mapping.")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", help="The service.")] = None,
    env: Annotated[str | None, typer.Option("--env", help="The environment.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="The version.")] = None,
    artifact: Annotated[
        Path | None,
        typer.Option("--artifact", help="The artifact file (its SHA-256 is the digest)."),
    ] = None,
    digest: Annotated[
        str | None, typer.Option("--digest", help="The artifact digest, without a file.")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="rolling, blue-green or canary.")
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="process (flags) or any with --config.")
    ] = "process",
    command: Annotated[
        str | None,
        typer.Option("--command", help="Starts one instance; {port}, {artifact}, {version}."),
    ] = None,
    instances: Annotated[int, typer.Option("--instances", min=1, max=64)] = 1,
    health_path: Annotated[
        str | None, typer.Option("--health-path", help="HTTP health check path, e.g. /health.")
    ] = None,
    commit: Annotated[
        list[str] | None,
        typer.Option("--commit", help="A commit shipped (default: the release request's)."),
    ] = None,
    fixes: Annotated[
        str | None, typer.Option("--fixes", help="The incident this deploy repairs.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--as", help="Sign as this actor (needs deploy.*).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Deploy VERSION of a service; a failed health gate rolls back on its own. Records
    deploy.started / deploy.finished (and deploy.rolled_back) on the ledger.

    Example: opsledger deploy --config deploy.yaml --version 1.0.0 --artifact dist/app.py
    """
    if ctx.invoked_subcommand is not None:
        return
    state = get_state(ctx)
    if version is None:
        raise InvalidInput("--version is required")
    if config is not None:
        raw = load_deploy_file(config)
        where = str(config)
        workdir = config.resolve().parent
    else:
        raw = _from_flags(
            service=service,
            env=env,
            strategy=strategy,
            target=target,
            command=command,
            instances=instances,
            health_path=health_path,
        )
        where = "command line"
        workdir = Path.cwd()
    if artifact is not None:
        digest_found = file_digest(artifact)
        if digest is not None and digest != digest_found:
            raise InvalidInput(
                f"--digest {digest} is not the digest of {artifact} ({digest_found})"
            )
        digest = digest_found
        if raw.get("target", {}).get("kind") == "process":
            raw["target"] = {**raw["target"], "artifact": str(artifact.resolve())}
    if digest is None:
        raise InvalidInput("give --artifact FILE or --digest sha256:...")

    def log(line: str) -> None:
        state.err.print(Text(line, style="dim"), soft_wrap=True)

    outcome = run(
        state.home,
        raw,
        where=where,
        version=version,
        digest=digest,
        workdir=workdir,
        commits=list(commit) if commit else None,
        actor=actor,
        fixes=fixes,
        log=log,
    )
    if as_json:
        print_json(
            state.out,
            {"status": outcome.status, "reason": outcome.reason, "tx_ids": list(outcome.tx_ids)},
        )
    else:
        style = "green" if outcome.status == "success" else "bold red"
        say(state.out, f"{outcome.status}: {outcome.reason}", style=style)
    if outcome.status != "success":
        raise typer.Exit(1)


@deploy_app.command("status")
def status(
    ctx: typer.Context,
    service: Annotated[str, typer.Option("--service", help="The service.")],
    env: Annotated[str, typer.Option("--env", help="The environment.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What runs now for a service in an environment (process and script targets).

    Example: opsledger deploy status --service shop --env production
    """
    state = get_state(ctx)
    info = deploy_status(state.home, service, env)
    if as_json:
        print_json(state.out, info)
        return
    active = info["active"] or {}
    rows = [
        ("service", service),
        ("environment", env),
        ("version", active.get("version", "nothing deployed")),
        ("digest", active.get("digest")),
        ("color", active.get("pool")),
        (
            "instances",
            ", ".join(
                f"127.0.0.1:{m['port']}" + ("" if m["alive"] else " (down)")
                for m in active.get("instances", [])
            ),
        ),
    ]
    if "switch" in info:
        rows.append(
            ("switch", info["switch"]["url"] + ("" if info["switch"]["alive"] else " (down)"))
        )
    state.out.print(kv_table(rows))


@deploy_app.command("down")
def down(
    ctx: typer.Context,
    service: Annotated[str, typer.Option("--service", help="The service.")],
    env: Annotated[str, typer.Option("--env", help="The environment.")],
) -> None:
    """Stop every instance and the switch the process target runs for a service.

    Example: opsledger deploy down --service shop --env production
    """
    state = get_state(ctx)
    stopped = deploy_down(state.home, service, env)
    say(state.out, "stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root command."""
    app.add_typer(deploy_app, name="deploy")
