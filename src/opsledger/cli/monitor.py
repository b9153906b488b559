"""``opsledger monitor``: probes, alert rules, notifications and the status page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.home import Home
from opsledger.cli._render import print_json, print_json_lines, print_table, say
from opsledger.cli._state import get_state

__all__ = ["register"]

monitor_app = typer.Typer(
    help="Probe nodes and endpoints, alert, open incidents, serve the status page.",
    invoke_without_command=True,
)
rules_app = typer.Typer(help="The alert rules, as Prometheus rule files.", no_args_is_help=True)
monitor_app.add_typer(rules_app, name="rules")
silence_app = typer.Typer(
    help="Mute alerts for a while, on the ledger (who, why, until when).", no_args_is_help=True
)
monitor_app.add_typer(silence_app, name="silence")
maintenance_app = typer.Typer(
    help="Scheduled maintenance windows shown on the status page.", no_args_is_help=True
)
monitor_app.add_typer(maintenance_app, name="maintenance")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A YAML file with a monitor section (default: the home's opsledger.yaml).",
        exists=False,
    ),
]


@monitor_app.callback()
def monitor(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run the monitor until Ctrl-C: probes, rules, notifications, /metrics, /status.

    With a ledger home, alerts, incidents and their history are recorded on it.

    Example: opsledger --home H monitor --config monitor.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    from opsledger.app.monitor import load_monitor, run_monitor

    state = get_state(ctx)
    home = _home(ctx)
    settings, rules, _ = load_monitor(config, home)
    targets = len(settings.targets)
    state.err.print(
        f"monitor: {targets} target(s), {len(rules)} rule(s), listening on {settings.listen}"
        + ("" if home else " (no ledger home: nothing is recorded)")
    )
    run_monitor(settings, rules, home)


@rules_app.command("export")
def export(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Print the rules in force as a Prometheus rule file (``promtool check rules``).

    Example: opsledger monitor rules export --config monitor.yaml > rules.yml
    """
    from opsledger.app.monitor import load_monitor
    from opsledger.monitor.rules import export_rule_file

    state = get_state(ctx)
    _, rules, _ = load_monitor(config, _home(ctx))
    state.out.print(export_rule_file(rules), end="", markup=False, highlight=False, soft_wrap=True)


@rules_app.command("check")
def check(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Validate the config and its rules; print one line per rule.

    Example: opsledger monitor rules check --config monitor.yaml
    """
    from opsledger.app.monitor import load_monitor

    state = get_state(ctx)
    settings, rules, _ = load_monitor(config, _home(ctx))
    for rule in rules:
        state.out.print(
            f"{rule.alert}: for {rule.for_seconds:g}s, severity {rule.labels.get('severity', '-')}",
            markup=False,
            highlight=False,
        )
    state.out.print(f"ok: {len(settings.targets)} target(s), {len(rules)} rule(s)", markup=False)


@silence_app.command("add")
def silence_add(
    ctx: typer.Context,
    match: Annotated[
        list[str],
        typer.Option("--match", "-m", help="A label matcher: name=value, name=~regex, ..."),
    ],
    comment: Annotated[str, typer.Option("--comment", help="Why (required).")],
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 1d.")] = "1h",
    actor: Annotated[
        str | None, typer.Option("--as", help="Act as this actor (default: the admin).")
    ] = None,
) -> None:
    """Silence the alerts every matcher selects; running monitors pick it up in seconds.

    Example: opsledger monitor silence add -m alertname=NodeHeadLag -m target=node-a
    --for 2h --comment "node-a resyncing after the upgrade"
    """
    from opsledger.app.monitor import create_silence

    state = get_state(ctx)
    signer = state.home.signer(actor)
    with state.writer() as client:
        body = create_silence(client, signer, match, duration, comment)
    say(state.out, f"{body['id']} until {body['ends_at']}")


@silence_app.command("list")
def silence_list(
    ctx: typer.Context,
    everything: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Active and pending silences (``--all``: expired too), newest first.

    Example: opsledger monitor silence list
    """
    from opsledger.app.monitor import list_silences

    state = get_state(ctx)
    with state.reader() as client:
        rows = list_silences(client, everything=everything)
    if as_json:
        print_json(state.out, rows)
        return
    print_table(
        state.out,
        ["id", "state", "matchers", "until", "by", "comment"],
        [
            (
                r["id"],
                r["state"],
                " ".join(r["matchers"]),
                r["ends_at"],
                r["created_by"],
                r["comment"],
            )
            for r in rows
        ],
    )


@silence_app.command("expire")
def silence_expire(
    ctx: typer.Context,
    silence_id: Annotated[str, typer.Argument(help="The silence's id (SIL-...).")],
    actor: Annotated[
        str | None, typer.Option("--as", help="Act as this actor (default: the admin).")
    ] = None,
) -> None:
    """End a silence now.

    Example: opsledger monitor silence expire SIL-0123456789
    """
    from opsledger.app.monitor import expire_silence

    state = get_state(ctx)
    signer = state.home.signer(actor)
    with state.writer() as client:
        expire_silence(client, signer, silence_id)
    say(state.out, f"expired {silence_id}")


def _home(ctx: typer.Context) -> Home | None:
    state = get_state(ctx)
    return state.home if state.home.exists() else None


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")


@maintenance_app.command("add")
def maintenance_add(
    ctx: typer.Context,
    *,
    component: Annotated[
        list[str], typer.Option("--component", "-c", help="A status page component (repeat).")
    ],
    title: Annotated[str, typer.Option("--title", help="What users read.")],
    start: Annotated[str, typer.Option("--start", help="RFC 3339 UTC start time.")],
    end: Annotated[str, typer.Option("--end", help="RFC 3339 UTC end time.")],
    cancel: Annotated[
        str | None, typer.Option("--cancel", help="Cancel this window (MNT-...) instead.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--as", help="Act as this actor (default: the admin).")
    ] = None,
) -> None:
    """Schedule maintenance; the status page lists it, then shows the components as
    under maintenance while it lasts.

    Example: opsledger monitor maintenance add -c rpc-mainnet --title "Node upgrade"
    --start 2026-11-23T02:00:00Z --end 2026-11-23T03:00:00Z
    """
    from opsledger.app.monitor import schedule_maintenance

    state = get_state(ctx)
    signer = state.home.signer(actor)
    with state.writer() as client:
        body = schedule_maintenance(
            client,
            signer,
            components=component,
            title=title,
            starts_at=start,
            ends_at=end,
            maintenance_id=cancel,
            cancelled=cancel is not None,
        )
    say(state.out, f"{body['id']} {body['starts_at']} to {body['ends_at']}")


@maintenance_app.command("list")
def maintenance_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Every maintenance window on the ledger, by start time.

    Example: opsledger monitor maintenance list
    """
    from opsledger.app.monitor import list_maintenance

    state = get_state(ctx)
    with state.reader() as client:
        windows = list_maintenance(client)
    rows = [{**w.public(), "cancelled": w.cancelled} for w in windows]
    if as_json:
        print_json_lines(state.out, rows)
        return
    print_table(
        state.out,
        ["id", "title", "components", "start", "end", "cancelled"],
        [
            (
                r["id"],
                r["title"],
                ", ".join(r["components"]),
                r["starts_at"],
                r["ends_at"],
                r["cancelled"],
            )
            for r in rows
        ],
    )
