"""Regenerate docs/cli.md from the CLI's own --help (``--check`` fails if it drifted)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.update(
    {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
)

from typer.testing import CliRunner

from opsledger.cli import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def commands() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    found: list[list[str]] = [[]]
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        found.append([name])
        for sub in sorted(getattr(command, "commands", {}) or {}):
            found.append([name, sub])
    return found


def render() -> str:
    runner = CliRunner()
    out = [
        "# Command reference",
        "",
        "Generated from `opsledger ... --help` by `scripts/gen_cli_doc.py`; a test fails when",
        "this page and the CLI disagree. Every command exits 0 on success, 1 when verification",
        "fails, and 2 for bad input or usage, printing one `error:` line to stderr.",
        "",
    ]
    for path in commands():
        result = runner.invoke(app, [*path, "--help"], terminal_width=100)
        title = " ".join(["opsledger", *path])
        text = "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())
        out += [f"## `{title}`", "", "```", text, "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    rendered = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.read_text() == rendered else 1)
    DOC.write_text(rendered)
