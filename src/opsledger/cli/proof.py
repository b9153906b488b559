"""``opsledger proof``: inclusion and consistency proofs, checked before they are shown.

The proof is recomputed against the root in the checkpoint it comes with before it is
printed, so a node bug never hands out a proof that does not verify. That check does not
cover the checkpoint's signature: a relying party checks that with the node's key
(``opsledger.core.open_checkpoint``), which is what makes the proof worth anything.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from opsledger.cli._render import kv_table, print_json, print_raw
from opsledger.cli._state import get_state
from opsledger.core import parse_checkpoint, verify_consistency, verify_inclusion

__all__ = ["register"]


def _root(note: str) -> bytes:
    checkpoint, _ = parse_checkpoint(note)
    return checkpoint.root


def _check_inclusion(view: dict[str, Any]) -> None:
    verify_inclusion(
        int(view["leaf_index"]),
        int(view["tree_size"]),
        bytes.fromhex(view["leaf_hash"]),
        [bytes.fromhex(h) for h in view["hashes"]],
        _root(view["checkpoint"]),
    )


def _check_consistency(view: dict[str, Any]) -> None:
    verify_consistency(
        int(view["first"]),
        int(view["second"]),
        _root(view["first_checkpoint"]),
        _root(view["second_checkpoint"]),
        [bytes.fromhex(h) for h in view["hashes"]],
    )


def proof(
    ctx: typer.Context,
    *,
    tx_id: Annotated[
        str | None, typer.Argument(metavar="TXID", help="Prove this transaction is included.")
    ] = None,
    size: Annotated[
        int | None, typer.Option("--size", min=1, help="Against this tree size (default: head).")
    ] = None,
    consistency: Annotated[
        tuple[int, int] | None,
        typer.Option("--consistency", metavar="M N", help="Prove tree M is a prefix of tree N."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print an inclusion proof for TXID, or a consistency proof between two tree sizes.

    Example: opsledger proof 9e956fe4...2797 --json > proof.json
    """
    state = get_state(ctx)
    if (tx_id is None) == (consistency is None):
        raise typer.BadParameter("give either TXID or --consistency M N", ctx=ctx)
    if consistency is not None and size is not None:
        raise typer.BadParameter("--size applies to inclusion proofs only", ctx=ctx)
    with state.reader() as client:
        if consistency is not None:
            view = client.consistency_proof(*consistency)
            _check_consistency(view)
        elif tx_id is not None:
            view = client.inclusion_proof(tx_id, size)
            _check_inclusion(view)
        else:  # unreachable after the check above; keeps the types exact
            raise typer.BadParameter("give either TXID or --consistency M N", ctx=ctx)
    if as_json:
        print_json(state.out, view)
        return
    if consistency is not None:
        rows = [("first", view["first"]), ("second", view["second"])]
    else:
        rows = [
            ("tx id", view.get("tx_id")),
            ("leaf index", view["leaf_index"]),
            ("tree size", view["tree_size"]),
            ("leaf hash", view["leaf_hash"]),
        ]
    rows += [(f"hash {i}", h) for i, h in enumerate(view["hashes"])]
    rows.append(("leads to root", "yes (checkpoint signature not checked here)"))
    state.out.print(kv_table(rows))
    notes = (
        [view["first_checkpoint"], view["second_checkpoint"]]
        if consistency is not None
        else [view["checkpoint"]]
    )
    for note in notes:
        print_raw(state.out, "\n" + note)


def register(app: typer.Typer) -> None:
    app.command("proof")(proof)
