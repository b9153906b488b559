"""``opsledger audit report``: a period's releases, gate verdicts, production access, SLA
violations and contracts in force, with the proofs an auditor checks offline.

The report is gathered by ``opsledger.app.audit`` from a read-only client (it works while
another process writes); this module parses, writes the optional bundle and renders.
The bundle is exported up to the report's own block height, so the report's checkpoint
and the bundle describe the same tree.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.audit import PRODUCTION, build_report, with_bundle
from opsledger.app.audit_render import render_markdown, to_json
from opsledger.app.bundle import export_bundle
from opsledger.cli._render import print_raw, say
from opsledger.cli._state import get_state
from opsledger.core import InvalidInput
from opsledger.core.tx import normalize_time

__all__ = ["register"]

audit_app = typer.Typer(
    help="Audit reports: what happened in a period, with proofs to check offline.",
    no_args_is_help=True,
)


class ReportFormat(StrEnum):
    md = "md"
    json = "json"


@audit_app.command("report")
def report(
    ctx: typer.Context,
    *,
    since: Annotated[
        str | None, typer.Option("--since", help="From this time on (a date or RFC 3339).")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Before this time (exclusive; a date or RFC 3339)."),
    ] = None,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="md (readable) or json (one object).")
    ] = ReportFormat.md,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here, not stdout.")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Also export the ledger to this bundle (.gz to compress)."),
    ] = None,
    environment: Annotated[
        list[str] | None,
        typer.Option(
            "--environment",
            metavar="<str>",
            help="A production environment name (repeatable; default: production, prod).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Report a period: releases (completed, in delivery, planned), gate verdicts with
    their evidence, production access sessions, SLA violations and contracts in force,
    with the checkpoint and an inclusion proof for every transaction cited.

    Example: opsledger audit report --since 2026-10-01 --until 2026-11-01 --bundle b.jsonl.gz
    """
    state = get_state(ctx)
    start = normalize_time(since, "--since") if since else None
    end = normalize_time(until, "--until") if until else None
    with state.reader() as client:
        result = build_report(
            client, since=start, until=end, production=tuple(environment or PRODUCTION)
        )
    if bundle is not None:
        with state.home.open_store() as store:
            export_bundle(store, bundle, upto=result.ledger.head["height"])
        result = with_bundle(result, str(bundle))
    if as_json or fmt is ReportFormat.json:
        text = json.dumps(to_json(result), ensure_ascii=False, separators=(", ", ": ")) + "\n"
    else:
        text = render_markdown(result)
    if output is None:
        print_raw(state.out, text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {output}: {exc.strerror or exc}", field="output") from exc
    say(state.out, f"wrote {output} ({len(result.proofs)} transactions cited, with proofs)")
    if result.bundle is not None:
        say(state.out, f"check the bundle offline: {result.bundle.verify_command}")


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
