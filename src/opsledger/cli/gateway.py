"""``opsledger gateway``: the JSON-RPC gateway in front of blockchain nodes."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.gateway import gateway_recorder, load_gateway_config
from opsledger.cli._render import print_table
from opsledger.cli._state import get_state

__all__ = ["gateway_app", "register"]

gateway_app = typer.Typer(
    help="JSON-RPC gateway: health-checked routing, failover, caching, rate limits.",
    invoke_without_command=True,
)
keys_app = typer.Typer(
    help="API keys: generated here, stored hashed in the config.", no_args_is_help=True
)
gateway_app.add_typer(keys_app, name="keys")


def _home_given(ctx: typer.Context) -> bool:
    source = ctx.find_root().get_parameter_source("home")
    # By name: typer may bundle its own click, with its own ParameterSource enum.
    return getattr(source, "name", "") in ("COMMANDLINE", "ENVIRONMENT")


@gateway_app.callback()
def gateway(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="A YAML file with the gateway section (default: opsledger.yaml's)."
        ),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the config and exit.")] = False,
) -> None:
    """Serve JSON-RPC at http://LISTEN/rpc/CHAIN until interrupted.

    Example: opsledger --home ./.opsledger gateway --config gateway.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    state = get_state(ctx)
    home = state.home if _home_given(ctx) else None
    loaded = load_gateway_config(config, home)
    if check:
        state.out.print(f"config ok: {loaded.digest()} ({len(loaded.chains)} chains)")
        return
    from opsledger.gateway.server import serve
    from opsledger.gateway.service import Gateway

    recorder = gateway_recorder(home)
    chains = ", ".join(f"http://{loaded.listen}/rpc/{c.name}" for c in loaded.chains)
    state.err.print(
        f"gateway serving {chains}" + ("" if home else " (no --home: recording nothing)")
    )
    serve(Gateway(loaded, recorder))


@keys_app.command("add")
def keys_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the key (shown in metrics).")],
    tier: Annotated[str, typer.Option("--tier", help="A tier from rate_limits.tiers.")] = "default",
) -> None:
    """Generate an API key: prints the key once and the config entry holding its hash.

    Example: opsledger gateway keys add alice --tier pro
    """
    from opsledger.gateway.ratelimit import hash_key

    state = get_state(ctx)
    key = secrets.token_urlsafe(24)
    state.err.print("API key (shown once; only its hash goes into the config):")
    state.out.print(key, soft_wrap=True)
    state.err.print("add under gateway.rate_limits.keys:")
    state.err.print(f'  - {{name: {name}, tier: {tier}, hash: "{hash_key(key)}"}}', soft_wrap=True)


@keys_app.command("hash")
def keys_hash(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The API key text.")],
) -> None:
    """Print the sha256:<hex> form of an existing key, as the config stores it.

    Example: opsledger gateway keys hash "$API_KEY"
    """
    from opsledger.gateway.ratelimit import hash_key

    get_state(ctx).out.print(hash_key(key), soft_wrap=True)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The gateway config (default: opsledger.yaml's section)."),
    ] = None,
) -> None:
    """List the configured API keys: name, tier and the tier's limits (never a key).

    Example: opsledger gateway keys list --config gateway.yaml
    """
    state = get_state(ctx)
    home = state.home if _home_given(ctx) or config is None else None
    loaded = load_gateway_config(config, home)
    tiers = loaded.rate_limits.tiers
    print_table(
        state.out,
        ["name", "tier", "rps", "burst", "hash"],
        [
            (
                k.name,
                k.tier,
                f"{tiers[k.tier].rps:g}",
                f"{tiers[k.tier].burst:g}",
                k.hash[:19] + "…",
            )
            for k in loaded.rate_limits.keys
        ],
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root command."""
    app.add_typer(gateway_app, name="gateway")
