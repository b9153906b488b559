"""A blameless postmortem in Markdown, drafted from the ledger.

Everything factual (impact window, timeline, the deploy it is attributed to, action items
and their owners) comes from signed transactions; the sections people must write (what
went well, contributing factors) are headed and left with prompts, because a tool that
invents causes is worse than one that asks for them.
"""

from __future__ import annotations

from collections.abc import Sequence

from opsledger.monitor.incidents import Incident, TimelineEntry, parse_ts

__all__ = ["render_postmortem"]


def _duration(incident: Incident) -> str:
    if not incident.resolved_at:
        return "ongoing"
    seconds = (parse_ts(incident.resolved_at) - parse_ts(incident.opened_at)).total_seconds()
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def render_postmortem(
    incident: Incident, entries: Sequence[TimelineEntry], proposed_deploy: str | None
) -> str:
    lines = [
        f"# Postmortem: {incident.title}",
        "",
        f"- **Incident**: {incident.id} ({incident.severity})",
        f"- **Opened**: {incident.opened_at} by {incident.opened_by}",
        f"- **Resolved**: {incident.resolved_at or 'not yet'}",
        f"- **Duration**: {_duration(incident)}",
        f"- **Owner**: {incident.owner or 'unassigned'}",
        "",
        "This postmortem is blameless: it describes what happened and how the system let it"
        " happen, not who to blame.",
        "",
        "## Summary",
        "",
        incident.summary or "_What happened, in two sentences._",
        "",
        "## Impact",
        "",
        f"Users were affected from {incident.opened_at} to {incident.resolved_at or 'now'}"
        f" ({_duration(incident)}). _Describe who was affected and how._",
        "",
        "## Timeline",
        "",
        "| time (UTC) | event | by | ledger tx |",
        "| --- | --- | --- | --- |",
    ]
    for entry in entries:
        summary = entry.summary.replace("|", "\\|")
        lines.append(f"| {entry.ts} | {summary} | {entry.actor} | `{entry.tx_id[:12]}` |")
    lines += ["", "## Contributing factors", ""]
    if incident.deploy:
        lines.append(f"- Attributed to deploy `{incident.deploy}` (confirmed on the ledger).")
    elif proposed_deploy:
        lines.append(
            f"- The timeline proposes deploy `{proposed_deploy}` as the cause; confirm or reject"
            f" it with `opsledger incident attribute {incident.id} {proposed_deploy}`."
        )
    lines += [
        "- _What conditions made this possible?_",
        "",
        "## What went well",
        "",
        "- _What helped detect, respond or recover?_",
        "",
        "## Action items",
        "",
        "| # | action | owner | due | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for item in sorted(incident.action_items.values(), key=lambda a: a.item):
        lines.append(
            f"| {item.item} | {item.title} | {item.owner} | {item.due or ''} | {item.status} |"
        )
    if not incident.action_items:
        lines.append(
            "| | _add with `opsledger incident action ID --title ... --owner ...`_ | | | |"
        )
    return "\n".join(lines) + "\n"
