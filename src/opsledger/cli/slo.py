"""``opsledger slo``: service-level objectives, their uptime and error budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsledger.cli._render import print_json_lines, print_table
from opsledger.cli._state import get_state

__all__ = ["register", "slo_app"]

slo_app = typer.Typer(
    help="Service-level objectives: uptime and error budgets from the ledger.",
    no_args_is_help=True,
)


@slo_app.command("report")
def report(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The monitor config (default: the home's opsledger.yaml)."),
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(
            "--period", help="YYYY-MM, YYYY-MM-DD or START/END (default: each SLO's window)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Per SLO: availability, uptime in nines, error budget left.

    Example: opsledger slo report --config monitor.yaml --period 2026-11
    """
    from opsledger.app.monitor import load_monitor
    from opsledger.app.slo import slo_report

    state = get_state(ctx)
    settings, _, _ = load_monitor(config, state.home if state.home.exists() else None)
    with state.reader() as client:
        rows = slo_report(client, settings.slos, period)
    if as_json:
        print_json_lines(state.out, rows)
        return
    print_table(
        state.out,
        ["slo", "sli", "target", "objective", "availability", "nines", "budget left", "status"],
        [
            (
                r["slo"],
                r["sli"] + (f" < {r['threshold_ms']:g} ms" if r["threshold_ms"] else ""),
                r["target"],
                f"{r['objective']:g}%",
                f"{r['availability']}% ({r['good']}/{r['total']})",
                "∞" if r["nines"] is None else f"{r['nines']:.2f}",
                f"{r['budget_left_percent']}%",
                "met" if r["met"] else "missed",
            )
            for r in rows
        ],
        caption=f"period: {rows[0]['period'] if rows else period or '-'}",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(slo_app, name="slo")
