"""``opsledger init``: create a ledger home (keys, store, genesis block)."""

from __future__ import annotations

from typing import Annotated

import typer

from opsledger.cli._render import kv_table, print_json
from opsledger.cli._state import get_state

__all__ = ["register"]


def init(
    ctx: typer.Context,
    *,
    admin: Annotated[str, typer.Option("--admin", help="Name of the first admin.")] = "admin",
    node: Annotated[str, typer.Option("--node", help="Name of this ledger node.")] = "node",
    store: Annotated[
        str | None,
        typer.Option("--store", help="Store URL (default: SQLite inside the home)."),
    ] = None,
    contracts: Annotated[
        bool,
        typer.Option(
            "--contracts/--no-contracts",
            help="Deploy the built-in contracts (release-gate, sla) with their defaults.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a new ledger: admin and node keys, the store, the genesis block and the
    built-in contracts.

    The genesis block hash printed here is the ledger id: auditors pin it with
    verify --genesis.

    Example: opsledger init --admin alice --node node-1
    """
    state = get_state(ctx)
    info = state.home.init(admin=admin, node=node, store=store, builtin_contracts=contracts)
    if as_json:
        print_json(state.out, info)
        return
    state.out.print(
        kv_table(
            [
                ("home", info["home"]),
                ("ledger id", info["genesis_hash"]),
                ("admin", f"{info['admin']} (key {info['admin_key_id']})"),
                ("node", f"{info['node']} (key {info['node_key_id']})"),
                ("contracts", ", ".join(c["contract"] for c in info["contracts"]) or "none"),
            ],
            title="Created a new ledger",
        )
    )


def register(app: typer.Typer) -> None:
    app.command("init")(init)
