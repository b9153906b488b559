"""``opsledger monitor``: probes, alert rules, notifications and the status page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.home import Home
from opsledger.cli._state import get_state

__all__ = ["register"]

monitor_app = typer.Typer(
    help="Probe nodes and endpoints, alert, open incidents, serve the status page.",
    invoke_without_command=True,
)
rules_app = typer.Typer(help="The alert rules, as Prometheus rule files.", no_args_is_help=True)
monitor_app.add_typer(rules_app, name="rules")

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


def _home(ctx: typer.Context) -> Home | None:
    state = get_state(ctx)
    return state.home if state.home.exists() else None


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
