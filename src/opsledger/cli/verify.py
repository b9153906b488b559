"""``opsledger verify``: re-check a whole ledger, from a home or from a bundle file.

Exit 0 when everything holds, 1 when anything does not (naming the first bad block and
transaction), 2 for usage errors. With ``--json`` the outcome is one object on stdout
either way (``{"ok": true, ...}`` or ``{"ok": false, "height", "tx_id", "reason", ...}``)
so a script can record why, and the exit code still says which.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from opsledger.app.bundle import verify_bundle, verify_home_store
from opsledger.cli._render import kv_table, print_json, progress_bar
from opsledger.cli._state import get_state
from opsledger.core import VerificationFailed, VerifyResult

__all__ = ["parse_genesis", "register"]

_HASH = re.compile(r"^[0-9a-f]{64}$")


def parse_genesis(value: str | None) -> str | None:
    """A pinned genesis hash from the command line, or None; bad ones are usage errors."""
    if value is None:
        return None
    value = value.strip().lower()
    if not _HASH.match(value):
        raise typer.BadParameter("a genesis hash is 64 hex digits", param_hint="--genesis")
    return value


def _failure_view(exc: VerificationFailed) -> dict[str, Any]:
    details = exc.details
    return {
        "ok": False,
        "height": details.get("height"),
        "tx_id": details.get("tx_id"),
        "reason": details.get("reason", exc.message),
        "message": exc.message,
        **{k: v for k, v in details.items() if k not in ("height", "tx_id", "reason")},
    }


def _result_view(result: VerifyResult) -> dict[str, Any]:
    return {
        "ok": True,
        "height": result.height,
        "log_size": result.log_size,
        "log_root": result.log_root,
        "transactions": result.transactions,
        "genesis_hash": result.genesis_hash,
        "origin": result.origin,
    }


def verify(
    ctx: typer.Context,
    *,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Verify this bundle file offline instead of the home."),
    ] = None,
    genesis: Annotated[
        str | None,
        typer.Option("--genesis", help="Pin the ledger id (genesis block hash) to trust."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Re-check the whole ledger from genesis, from the home or from a bundle file.

    Every signature, identity rule, nonce, block link, Merkle root and checkpoint
    signature is checked again.

    Example: opsledger verify --bundle ledger.jsonl.gz --genesis e2ab40c0...8f93
    """
    state = get_state(ctx)
    pinned = parse_genesis(genesis)
    source = str(bundle) if bundle is not None else str(state.home_path)
    try:
        with progress_bar(state.err, "verifying", enabled=not as_json) as progress:
            if bundle is not None:
                _, result = verify_bundle(bundle, genesis_hash=pinned, progress=progress)
            else:
                with state.home.open_store() as store:
                    result = verify_home_store(store, genesis_hash=pinned, progress=progress)
    except VerificationFailed as exc:
        # Not a handler: the JSON outcome goes to stdout, then the error travels on to
        # the root group, which prints the one-line reason and exits 1.
        if as_json:
            print_json(state.out, {**_failure_view(exc), "source": source})
        raise
    if as_json:
        print_json(
            state.out,
            {**_result_view(result), "source": source, "genesis_pinned": pinned is not None},
        )
        return
    anchor = (
        "pinned by --genesis"
        if pinned
        else "trusted from the bundle's first block; pin it with --genesis"
        if bundle is not None
        else "from the home's metadata"
    )
    state.out.print(
        kv_table(
            [
                ("source", source),
                ("ledger id", f"{result.genesis_hash} ({anchor})"),
                ("height", result.height),
                ("log size", result.log_size),
                ("log root", result.log_root),
                ("transactions", result.transactions),
            ],
            title="ok: the ledger verifies",
        )
    )


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
