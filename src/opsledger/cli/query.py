"""Reading the ledger: ``log``, ``show``, ``block``, ``checkpoint`` and ``head``.

All of them open the ledger read-only (see ``State.reader``), so they work while another
process writes. ``log`` pages through the store with the leaf-index cursor, so any
``--limit`` streams in pages of at most 1000 without holding the whole result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import typer

from opsledger.cli._render import kv_table, print_json, print_json_lines, print_raw, print_table
from opsledger.cli._state import get_state
from opsledger.client.base import LedgerClient
from opsledger.core import parse_checkpoint
from opsledger.core.tx import normalize_time

__all__ = ["register"]

PAGE = 1000

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _pages(client: LedgerClient, filters: dict[str, Any], limit: int) -> Iterator[dict[str, Any]]:
    remaining = limit
    cursor = filters.pop("after", None)
    while remaining > 0:
        page = client.list_transactions({**filters, "after": cursor, "limit": min(remaining, PAGE)})
        yield from page
        if len(page) < min(remaining, PAGE):
            return
        remaining -= len(page)
        cursor = page[-1]["leaf_index"]


def _subject(tx: dict[str, Any]) -> str:
    subject = tx.get("subject") or {}
    return f"{subject.get('kind')}:{subject.get('id')}"


def log(
    ctx: typer.Context,
    *,
    tx_type: Annotated[
        str | None, typer.Option("--type", help="Exact type, or a prefix like build.*")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="KIND or KIND:ID.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this time on.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this time.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    after: Annotated[
        int | None, typer.Option("--after", help="Cursor: leaf index to continue after.")
    ] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Newest first.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List transactions, oldest first, with filters.

    Example: opsledger log --type deploy.* --since 2026-11-21 --json
    """
    state = get_state(ctx)
    filters: dict[str, Any] = {
        "type": tx_type,
        "actor": actor,
        "subject": subject,
        "since": normalize_time(since, "--since") if since else None,
        "until": normalize_time(until, "--until") if until else None,
        "after": after,
        "order": "desc" if desc else "asc",
    }
    with state.reader() as client:
        views = _pages(client, filters, limit)
        if as_json:
            print_json_lines(state.out, views)
            return
        rows = []
        last = None
        for view in views:
            tx = view["transaction"]
            rows.append(
                (
                    view["leaf_index"],
                    view["height"],
                    tx.get("ts"),
                    tx.get("type"),
                    tx.get("actor"),
                    _subject(tx),
                    view["tx_id"][:12],
                )
            )
            last = view["leaf_index"]
    caption = f"more: --after {last}" if len(rows) == limit and last is not None else None
    print_table(
        state.out,
        ["leaf", "height", "time", "type", "actor", "subject", "tx id"],
        rows,
        caption=caption,
    )


def show(
    ctx: typer.Context,
    *,
    tx_id: Annotated[str, typer.Argument(metavar="TXID", help="Transaction id (hex).")],
    as_json: JsonOption = False,
) -> None:
    """Show one transaction with its position in the log.

    Example: opsledger show 9e956fe4...2797 --json
    """
    state = get_state(ctx)
    with state.reader() as client:
        view = client.get_transaction(tx_id)
    if as_json:
        print_json(state.out, view)
        return
    tx = view["transaction"]
    state.out.print(
        kv_table(
            [
                ("tx id", view["tx_id"]),
                ("type", tx.get("type")),
                ("actor", f"{tx.get('actor')} (key {tx.get('key_id')})"),
                ("subject", _subject(tx)),
                ("time", tx.get("ts")),
                ("height", view["height"]),
                ("leaf index", view["leaf_index"]),
                ("refs", ", ".join(tx.get("refs") or []) or "-"),
            ]
        )
    )
    state.out.print_json(data=tx.get("body"))


def block(
    ctx: typer.Context,
    *,
    height: Annotated[int, typer.Argument(metavar="N", min=0, help="Block height.")],
    as_json: JsonOption = False,
) -> None:
    """Show one block: its header, transaction ids and checkpoint.

    Example: opsledger block 0 --json
    """
    state = get_state(ctx)
    with state.reader() as client:
        view = client.get_block(height)
    if as_json:
        print_json(state.out, view)
        return
    header = view["header"]
    state.out.print(
        kv_table(
            [
                ("height", view["height"]),
                ("block hash", view["block_hash"]),
                ("prev hash", header["prev_hash"]),
                ("time", header["time"]),
                ("transactions", len(header["tx_ids"])),
                ("tx root", header["tx_root"]),
                ("log size", header["log_size"]),
                ("log root", header["log_root"]),
                ("proposer", f"{header['proposer']} (key {header['key_id']})"),
            ]
        )
    )
    for tx_id in header["tx_ids"]:
        state.out.print(f"  {tx_id}", highlight=False)


def checkpoint(
    ctx: typer.Context,
    *,
    size: Annotated[
        int | None, typer.Option("--size", min=1, help="Tree size (a block boundary).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print the signed checkpoint note (C2SP tlog-checkpoint), byte for byte.

    Example: opsledger checkpoint > checkpoint.txt
    """
    state = get_state(ctx)
    with state.reader() as client:
        note = client.checkpoint(size)
    if as_json:
        parsed, _ = parse_checkpoint(note)
        print_json(
            state.out,
            {
                "origin": parsed.origin,
                "size": parsed.size,
                "root": parsed.root.hex(),
                "checkpoint": note,
            },
        )
        return
    print_raw(state.out, note)


def head(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the latest block: height, log size and root, and the ledger id.

    Example: opsledger head --json
    """
    state = get_state(ctx)
    with state.reader() as client:
        view = client.head()
    if as_json:
        print_json(state.out, view)
        return
    state.out.print(kv_table([(key.replace("_", " "), value) for key, value in view.items()]))


def register(app: typer.Typer) -> None:
    app.command("log")(log)
    app.command("show")(show)
    app.command("block")(block)
    app.command("checkpoint")(checkpoint)
    app.command("head")(head)
