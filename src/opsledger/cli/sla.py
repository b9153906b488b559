"""``opsledger sla``: what was agreed, what was measured, what is owed."""

from __future__ import annotations

from typing import Annotated

import typer

from opsledger.app.sla import sla_report
from opsledger.cli._render import print_json_lines, print_table
from opsledger.cli._state import get_state

__all__ = ["register", "sla_app"]

sla_app = typer.Typer(
    help="Service-level agreements: reports from the ledger.", no_args_is_help=True
)


@sla_app.command("report")
def report(
    ctx: typer.Context,
    period: Annotated[
        str, typer.Option("--period", help="YYYY-MM, YYYY-MM-DD or START/END dates.")
    ],
    contract: Annotated[
        str | None, typer.Option("--contract", help="Only this SLA contract.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Per SLA contract and period: met or violated, error budget left, credits owed.

    Example: opsledger sla report --period 2026-11
    """
    state = get_state(ctx)
    with state.reader() as client:
        rows = sla_report(client, period, contract)
    if as_json:
        print_json_lines(state.out, rows)
        return
    print_table(
        state.out,
        [
            "contract",
            "service",
            "provider → consumer",
            "availability",
            "target",
            "status",
            "budget left",
            "credit owed",
            "violations",
        ],
        [
            (
                f"{r['contract']}@{r['version']}",
                r["service"],
                f"{r['provider']} → {r['consumer']}",
                f"{r['availability']}%",
                f"{r['target']}%",
                r["status"],
                f"{r['error_budget_left_percent']}%",
                f"{r['credit_percent']}%",
                len(r["violations"]),
            )
            for r in rows
        ],
        caption=f"period {period}",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(sla_app, name="sla")
