"""``opsledger dora``: the four DORA keys and the two newer measures, from the ledger."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from opsledger.app.dora import dora_report
from opsledger.cli._render import print_json, print_table, say
from opsledger.cli._state import get_state

__all__ = ["register"]


def _num(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def dora(
    ctx: typer.Context,
    *,
    window: Annotated[str, typer.Option("--window", help="How far back: 30d, 12h, 2w.")] = "30d",
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    env: Annotated[
        str, typer.Option("--env", help="The production environment's name.")
    ] = "production",
    until: Annotated[
        str | None,
        typer.Option("--until", help="End of the window (RFC 3339; default: now)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """DORA metrics from explicit links on the ledger, with the totals behind each ratio.

    Example: opsledger dora --window 30d --service shop --json
    """
    state = get_state(ctx)
    with state.reader() as client:
        report = dora_report(client, window=window, service=service, environment=env, until=until)
    if as_json:
        print_json(state.out, report)
        return
    t, tiers = report["totals"], report["tiers"]
    rows = [
        (
            "deployment frequency",
            _num(report["deployment_frequency_per_day"], "/day", 3),
            tiers["deployment_frequency"],
            f"{t['successful_deployments']} successful deploys "
            f"in {report['window']['days']:g} days",
        ),
        (
            "lead time for changes (median)",
            _num(report["lead_time_hours"], " h"),
            tiers["lead_time"],
            f"{t['commits_with_lead_time']} commits ({t['commits_without_push']} without a push)",
        ),
        (
            "change failure rate",
            _pct(report["change_failure_rate"]),
            tiers["change_failure_rate"],
            f"{t['failed_deployments']} of {t['deployments']} deploys "
            f"({t['rolled_back_deployments']} rolled back, "
            f"{t['deployments_with_incidents']} with incidents)",
        ),
        (
            "time to restore service (median)",
            _num(report["time_to_restore_hours"], " h"),
            tiers["time_to_restore"],
            f"{t['incidents_resolved']} of {t['incidents']} incidents resolved",
        ),
        (
            "failed deployment recovery time (median)",
            _num(report["failed_deployment_recovery_time_hours"], " h"),
            tiers["failed_deployment_recovery_time"],
            f"{t['failed_deployments_recovered']} of {t['failed_deployments']} recovered",
        ),
        (
            "deployment rework rate",
            _pct(report["deployment_rework_rate"]),
            None,
            f"{t['rework_deployments']} of {t['successful_deployments']} deploys fixed incidents",
        ),
        (
            "defect escape rate",
            _pct(report["defect_escape_rate"]),
            None,
            f"{t['escaped_defects']} of {t['defective_changes']} defective changes "
            "found in production",
        ),
    ]
    print_table(
        state.out,
        ["metric", "value", "tier", "from"],
        rows,
        caption=(
            f"{report['environment']}, {report['window']['start']} to {report['window']['end']}"
            + (f", service {service}" if service else "")
        ),
    )
    for failure in report["failures"]:
        links = "rolled back" if failure["rolled_back"] else ""
        if failure["incidents"]:
            links = ", ".join(filter(None, [links, "incidents " + ", ".join(failure["incidents"])]))
        say(
            state.out,
            f"failed: {failure['service']} {failure['version']} "
            f"(deploy {failure['deploy'][:12]}): {links}",
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root command."""
    app.command("dora")(dora)
