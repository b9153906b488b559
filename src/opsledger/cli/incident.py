"""``opsledger incident``: open, acknowledge, update, attribute, resolve, review.

Every command is one signed transaction; ``list`` and ``show`` read the ledger, so any
copy of it tells the same story.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.incidents import IncidentDesk
from opsledger.cli._render import kv_table, print_json, print_raw, print_table, say, short
from opsledger.cli._state import State, get_state

__all__ = ["register"]

incident_app = typer.Typer(help="Incidents and postmortems, on the ledger.", no_args_is_help=True)

AsOption = Annotated[
    str | None, typer.Option("--as", help="Act as this actor (default: the admin).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextlib.contextmanager
def _desk(state: State, actor: str | None, *, write: bool = True) -> Iterator[IncidentDesk]:
    if not write:
        with state.reader() as client:
            yield IncidentDesk(client)
        return
    signer = state.home.signer(actor)
    with state.writer() as client:
        yield IncidentDesk(client, signer)


@incident_app.command("open")
def open_incident(
    ctx: typer.Context,
    title: Annotated[str, typer.Option("--title", help="What users see is wrong.")],
    severity: Annotated[str, typer.Option("--severity", help="SEV1 (worst) to SEV4.")] = "SEV3",
    service: Annotated[str | None, typer.Option("--service", help="The affected service.")] = None,
    actor: AsOption = None,
) -> None:
    """Open an incident by hand (critical alerts open their own).

    Example: opsledger incident open --title "RPC errors on mainnet" --severity SEV2
    """
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        incident_id = desk.open(title, severity.upper(), service=service)
    say(state.out, incident_id)


@incident_app.command("ack")
def acknowledge(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument(help="The incident, e.g. INC-1a2b3c4d.")],
    owner: Annotated[str, typer.Option("--owner", help="Who is on it.")],
    minutes: Annotated[int, typer.Option("--for", help="Minutes until it needs a new ack.")] = 60,
    actor: AsOption = None,
) -> None:
    """Acknowledge: someone owns it until the expiry (not a silence: alerts still fire).

    Example: opsledger incident ack INC-1a2b3c4d --owner carol --for 30
    """
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        say(state.out, desk.acknowledge(incident_id, owner, for_minutes=minutes))


@incident_app.command("assign")
def assign(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    owner: Annotated[str, typer.Argument(help="The new owner.")],
    actor: AsOption = None,
) -> None:
    """Hand the incident to someone. Example: opsledger incident assign INC-1a2b3c4d dave"""
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        say(state.out, desk.assign(incident_id, owner))


@incident_app.command("update")
def update(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    text: Annotated[str, typer.Argument(help="The update, as users should read it.")],
    severity: Annotated[str | None, typer.Option("--severity", help="Change severity.")] = None,
    actor: AsOption = None,
) -> None:
    """Post an update. Example: opsledger incident update INC-1a2b3c4d "Failing over to node-b" """
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        say(
            state.out,
            desk.update(incident_id, text, severity=severity.upper() if severity else None),
        )


@incident_app.command("attribute")
def attribute(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    deploy: Annotated[str, typer.Argument(help="The deploy's transaction id.")],
    *,
    reject: Annotated[
        bool, typer.Option("--reject", help="Record that it was NOT this deploy.")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why.")] = "",
    actor: AsOption = None,
) -> None:
    """Confirm (or reject) the deploy an incident is attributed to; DORA reads this link.

    Example: opsledger incident attribute INC-1a2b3c4d 3f9a...e1
    """
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        say(state.out, desk.attribute(incident_id, deploy, reject=reject, reason=reason))


@incident_app.command("resolve")
def resolve(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    summary: Annotated[str, typer.Option("--summary", help="What happened, briefly.")] = "",
    actor: AsOption = None,
) -> None:
    """Resolve. Example: opsledger incident resolve INC-1a2b3c4d --summary "node-a resynced" """
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        say(state.out, desk.resolve(incident_id, summary))


@incident_app.command("action")
def action(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    *,
    title: Annotated[str | None, typer.Option("--title", help="A new action item.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Its owner.")] = None,
    due: Annotated[str | None, typer.Option("--due", help="Due date, YYYY-MM-DD.")] = None,
    done: Annotated[int | None, typer.Option("--done", help="Mark item N done.")] = None,
    actor: AsOption = None,
) -> None:
    """Track action items: add one, or mark one done.

    Example: opsledger incident action INC-1a2b3c4d --title "Alert on lag" --owner eve
    """
    state = get_state(ctx)
    with _desk(state, actor) as desk:
        if done is not None:
            say(state.out, desk.complete_action(incident_id, done))
            return
        if not title or not owner:
            raise typer.BadParameter("give --title and --owner, or --done N")
        say(state.out, str(desk.add_action(incident_id, title, owner, due)))


@incident_app.command("list")
def list_incidents(
    ctx: typer.Context,
    show_all: Annotated[bool, typer.Option("--all", help="Include resolved incidents.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Incidents, newest first (open ones unless --all). Example: opsledger incident list --json"""
    state = get_state(ctx)
    with _desk(state, None, write=False) as desk:
        incidents = [i for i in desk.all().values() if show_all or i.state != "resolved"]
    incidents.sort(key=lambda i: i.opened_at, reverse=True)
    if as_json:
        print_json(state.out, [i.as_dict() for i in incidents])
        return
    print_table(
        state.out,
        ("id", "severity", "state", "opened", "owner", "title"),
        ((i.id, i.severity, i.state, i.opened_at, i.owner, i.title) for i in incidents),
    )


@incident_app.command("show")
def show(
    ctx: typer.Context, incident_id: Annotated[str, typer.Argument()], as_json: JsonOption = False
) -> None:
    """One incident with its timeline and the deploy it may be attributed to.

    Example: opsledger incident show INC-1a2b3c4d
    """
    state = get_state(ctx)
    with _desk(state, None, write=False) as desk:
        incident = desk.get(incident_id)
        entries = desk.timeline(incident)
        proposal = desk.proposed_deploy(incident)
    if as_json:
        doc = incident.as_dict()
        doc["timeline"] = [vars(e) for e in entries]
        doc["proposed_deploy"] = proposal["tx_id"] if proposal else None
        print_json(state.out, doc)
        return
    state.out.print(
        kv_table(
            [
                ("id", incident.id),
                ("title", incident.title),
                ("severity", incident.severity),
                ("state", incident.state),
                ("opened", f"{incident.opened_at} by {incident.opened_by}"),
                ("owner", incident.owner),
                ("resolved", incident.resolved_at),
                ("deploy", incident.deploy),
                (
                    "proposed deploy",
                    proposal["tx_id"] if proposal and not incident.deploy else None,
                ),
            ]
        )
    )
    print_table(
        state.out,
        ("time", "event", "by", "tx"),
        ((e.ts, e.summary, e.actor, short(e.tx_id)) for e in entries),
    )


@incident_app.command("postmortem")
def postmortem(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument()],
    out: Annotated[Path | None, typer.Option("--out", help="Write the Markdown here.")] = None,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Record it on the ledger.")
    ] = True,
    actor: AsOption = None,
) -> None:
    """Draft the blameless postmortem (Markdown) from the ledger, and record its digest.

    Example: opsledger incident postmortem INC-1a2b3c4d --out postmortem.md
    """
    state = get_state(ctx)
    with _desk(state, actor, write=record) as desk:
        markdown = desk.postmortem(incident_id, record=record)
    if out is not None:
        out.write_text(markdown)
        say(state.err, f"wrote {out}")
    else:
        print_raw(state.out, markdown)


def register(app: typer.Typer) -> None:
    app.add_typer(incident_app, name="incident")
