"""``opsledger export``, ``import`` and ``fork``: a ledger as a file, and copies of it.

The format and the guarantees (streaming, verify-before-publish, nothing left behind on
refusal) live in ``opsledger.app.bundle``; these commands parse and render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from opsledger.app import load_key
from opsledger.app.bundle import export_bundle
from opsledger.app.snapshot import fork_home, import_bundle
from opsledger.cli._render import kv_table, print_json, progress_bar
from opsledger.cli._state import get_state
from opsledger.cli.verify import parse_genesis

__all__ = ["register"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _show(out: Console, title: str, info: dict[str, Any], keys: list[str]) -> None:
    out.print(kv_table([(k.replace("_", " "), info.get(k)) for k in keys], title=title))


def export(
    ctx: typer.Context,
    *,
    file: Annotated[Path, typer.Argument(help="Bundle file to write (.gz to compress).")],
    upto: Annotated[
        int | None, typer.Option("--upto", min=0, help="Last block height (default: head).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write the ledger to a bundle file that anyone can verify offline.

    Example: opsledger export ledger.jsonl.gz && opsledger verify --bundle ledger.jsonl.gz
    """
    state = get_state(ctx)
    with (
        state.home.open_store() as store,
        progress_bar(state.err, "exporting", enabled=not as_json) as progress,
    ):
        info = export_bundle(store, file, upto=upto, progress=progress)
    if as_json:
        print_json(state.out, info)
        return
    _show(
        state.out,
        f"exported to {file}",
        info,
        ["genesis_hash", "height", "log_size", "log_root", "transactions"],
    )


def import_(
    ctx: typer.Context,
    *,
    file: Annotated[Path, typer.Argument(help="Bundle file to import.")],
    home: Annotated[
        Path | None, typer.Option("--home", help="New home to create (default: --home).")
    ] = None,
    genesis: Annotated[
        str | None, typer.Option("--genesis", help="Refuse unless the ledger id is this.")
    ] = None,
    node_key: Annotated[
        Path | None,
        typer.Option("--node-key", help="The node's key file, to make the copy writable."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a bundle completely, then create a new home holding its ledger.

    A bundle that does not verify is refused and nothing is created. Without --node-key
    the new home can be read and verified, not written.

    Example: opsledger import ledger.jsonl.gz --home ./audit-copy
    """
    state = get_state(ctx)
    dest = home if home is not None else state.home_path
    pinned = parse_genesis(genesis)
    key = load_key(node_key) if node_key is not None else None
    with progress_bar(state.err, "importing", enabled=not as_json) as progress:
        info = import_bundle(file, dest, genesis_hash=pinned, node_key=key, progress=progress)
    if as_json:
        print_json(state.out, info)
        return
    _show(
        state.out,
        f"imported into {dest}",
        info,
        ["genesis_hash", "height", "log_size", "log_root", "transactions", "node", "writable"],
    )


def fork(
    ctx: typer.Context,
    *,
    dest: Annotated[Path, typer.Argument(help="New home directory for the fork.")],
    at: Annotated[int, typer.Option("--at", min=0, help="Last block height to keep.")],
    as_json: JsonOption = False,
) -> None:
    """Create a test copy of this ledger, verified, up to block height --at.

    New blocks in the copy are signed under their own fork origin, so they can never
    pass for this ledger's. The admin and node keys are copied.

    Example: opsledger fork --at 120 ./staging-ledger
    """
    state = get_state(ctx)
    with progress_bar(state.err, "forking", enabled=not as_json) as progress:
        info = fork_home(state.home, dest, at=at, progress=progress)
    if as_json:
        print_json(state.out, info)
        return
    _show(
        state.out,
        f"forked into {dest}",
        info,
        ["fork_origin", "fork_height", "genesis_hash", "log_size", "log_root", "transactions"],
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_)
    app.command("fork")(fork)
