"""Rendering an audit report: JSON for tools, Markdown for people (see ``audit``)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from opsledger.app.audit import STILL_OPEN, AuditReport, Release, Verdict

__all__ = ["render_markdown", "to_json"]


# -- output -------------------------------------------------------------------------


def to_json(report: AuditReport) -> dict[str, Any]:
    """The report as one JSON object (the shape ``--format json`` prints)."""
    data: dict[str, Any] = dataclasses.asdict(report)
    return data


_ESCAPE = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"} | {"\n": " ", "\r": " "})


def _text(value: Any) -> str:
    """Free text made inert in a Markdown table cell."""
    return "" if value is None else str(value).translate(_ESCAPE)


def _code(value: str | None, length: int | None = None) -> str:
    """An id as code; text that could end the code span or the cell stays plain."""
    if value is None:
        return "-"
    value = value[:length] if length else value
    return _text(value) if any(c in value for c in "`|\n\r") else f"`{value}`"


def _tid(tx_id: str | None) -> str:
    return _code(tx_id, 12)


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines if len(lines) > 2 else ["_None._"]


def _releases_md(title: str, releases: list[Release], completed: bool) -> list[str]:
    columns = ["Service", "Version", "Digest", "Requested", "By", "Gate", "Verdict", "Request"]
    if completed:
        columns += ["Deployed", "Environment", "Deploy"]
    rows = []
    for rel in releases:
        row = [
            _text(rel.service),
            _text(rel.version),
            _code(rel.digest, 19),
            rel.requested_at,
            _text(rel.requested_by),
            rel.gate,
            _tid(rel.verdict),
            _tid(rel.tx_id),
        ]
        if rel.deploy is not None:
            row += [rel.deploy.time, _text(rel.deploy.environment), _tid(rel.deploy.tx_id)]
        rows.append(row)
    return [f"### {title} ({len(releases)})", "", *_table(columns, rows), ""]


def _verdict_md(verdict: Verdict) -> list[str]:
    lines = [
        f"### {_text(verdict.contract)} v{verdict.version}: {verdict.result}, "
        f"tx {_tid(verdict.tx_id)}",
        "",
        f"Subject {_code(verdict.subject)}, trigger {_tid(verdict.trigger)}, "
        f"release request {_tid(verdict.release)}, recorded {verdict.time} "
        f"by {_text(verdict.actor)}.",
        "",
        *_table(
            ["Requirement", "Result", "Reason", "Evidence"],
            (
                [
                    _text(req.name),
                    req.result,
                    _text(req.reason),
                    ", ".join(_tid(e.tx_id) for e in req.evidence) or "-",
                ]
                for req in verdict.requirements
            ),
        ),
        "",
    ]
    evidence = {e.tx_id: e for req in verdict.requirements for e in req.evidence}
    if evidence:
        lines += [
            *_table(
                ["Evidence", "Type", "Actor", "Time"],
                (
                    [_tid(e.tx_id), e.type or "**not in the ledger**", _text(e.actor), e.time or ""]
                    for e in evidence.values()
                ),
            ),
            "",
        ]
    return lines


def render_markdown(report: AuditReport) -> str:
    """A readable report in plain Markdown (headings and tables, no terminal markup)."""
    ledger, head, rel = report.ledger, report.ledger.head, report.releases
    period = report.period
    still_open = sum(s.status == STILL_OPEN for s in report.access_sessions)
    lines = [
        "# Audit report",
        "",
        *_table(
            ["", ""],
            [
                ["Ledger id (genesis hash)", _code(ledger.genesis_hash)],
                ["Origin", _code(ledger.origin)],
                ["Period", f"{period.since or 'the beginning'} to {period.until or 'the head'}"],
                [
                    "State as of",
                    f"{period.until} (the end of the period, exclusive)"
                    if period.until
                    else f"the head, block time {head['time']}",
                ],
                ["Checkpoint", f"block {head['height']}, tree size {head['log_size']}"],
                ["Log root", _code(head["log_root"])],
            ],
        ),
        "",
        f"Releases: {len(rel.completed)} completed, {len(rel.in_delivery)} in delivery, "
        f"{len(rel.planned)} planned. Contract verdicts: {len(report.verdicts)}. Production "
        f"access sessions: {len(report.access_sessions)} ({still_open} {STILL_OPEN}). "
        f"SLA violations: {len(report.sla_violations)}. Contracts in force: "
        f"{len(report.contracts)}. Transactions cited: {len(report.proofs)}.",
        "",
        "## Releases",
        "",
        *_releases_md("Completed", rel.completed, True),
        *_releases_md("In delivery", rel.in_delivery, False),
        *_releases_md("Planned", rel.planned, False),
        f"## Contract verdicts ({len(report.verdicts)})",
        "",
    ]
    for verdict in report.verdicts:
        lines += _verdict_md(verdict)
    if not report.verdicts:
        lines += ["_None._", ""]
    lines += [
        f"## Production access sessions ({len(report.access_sessions)})",
        "",
        *_table(
            [
                *("Session", "Actor", "Environment", "Reason", "Command", "Opened", "Closed"),
                *("Exit code", "Duration (ms)", "Status"),
            ],
            (
                [
                    _tid(s.session),
                    _text(s.actor),
                    _text(s.environment),
                    _text(s.reason),
                    _text(shlex.join(s.command)),
                    s.opened_at,
                    s.closed_at or "-",
                    _text(s.exit_code if s.exit_code is not None else "-"),
                    _text(s.duration_ms if s.duration_ms is not None else "-"),
                    s.status if s.closed else f"**{s.status}**",
                ]
                for s in report.access_sessions
            ),
        ),
        "",
        f"## SLA violations ({len(report.sla_violations)})",
        "",
        *_table(
            ["Contract", "Objective", "Period", "Measured", "Target", "Recorded", "By", "Tx"],
            (
                [
                    _text(v.contract),
                    _text(v.objective),
                    _text(v.period),
                    _text(v.measured),
                    _text(v.target),
                    v.time,
                    _text(v.actor),
                    _tid(v.tx_id),
                ]
                for v in report.sla_violations
            ),
        ),
        "",
        f"## Contracts in force ({len(report.contracts)})",
        "",
        *_table(
            ["Name", "Version", "Digest", "Deployed", "By", "Tx", "All versions"],
            (
                [
                    _text(c.name),
                    str(c.version),
                    _code(c.digest),
                    c.time,
                    _text(c.actor),
                    _tid(c.tx_id),
                    ", ".join(f"v{d.version} {_tid(d.tx_id)}" for d in c.deployments),
                ]
                for c in report.contracts
            ),
        ),
        "",
        *_verification_md(report),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _verification_md(report: AuditReport) -> list[str]:
    ledger = report.ledger
    if report.bundle is not None:
        how = [
            f"The bundle `{report.bundle.file}` holds the ledger up to this checkpoint. "
            "Check it offline with:",
            "",
            "```",
            report.bundle.verify_command,
            "```",
            "",
            f"It must report log size {ledger.head['log_size']} and log root "
            f"`{ledger.head['log_root']}`.",
        ]
    else:
        how = [
            "Write a bundle beside the report with `--bundle FILE` (or `opsledger export "
            "FILE`), then check it offline with `opsledger verify --bundle FILE --genesis "
            f"{ledger.genesis_hash}`.",
        ]
    return [
        "## Verifying this report",
        "",
        *how,
        "",
        "Every transaction cited above is included in the tree of this signed checkpoint "
        "(C2SP signed note, signed by the ledger's node):",
        "",
        "```",
        ledger.checkpoint.rstrip("\n"),
        "```",
        "",
        f"### Inclusion proofs ({len(report.proofs)})",
        "",
        "One JSON object per cited transaction: `leaf` is its canonical signed bytes "
        "(base64; SHA-256 of them is the tx id), `leaf_hash` is SHA-256(0x00 || leaf) and "
        "`hashes` is the RFC 9162 audit path to the checkpoint's root.",
        "",
        "```json",
        *(
            json.dumps({"tx_id": tx_id, **dataclasses.asdict(proof)}, separators=(",", ":"))
            for tx_id, proof in report.proofs.items()
        ),
        "```",
    ]
