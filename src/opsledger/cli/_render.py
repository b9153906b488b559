"""Output helpers: JSON, JSON lines, exact text, key/value and row tables, progress.

Machine output (``--json``, checkpoint notes) is written straight to the console's file,
never through Rich's renderer: Rich would wrap long lines, interpret ``[brackets]`` as
markup and highlight numbers, and scripts parse these bytes. Human output goes through
Rich. Progress bars go to the error console and only when it is a terminal, so piped
output and ``--json`` stay clean.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

__all__ = [
    "ProgressFn",
    "kv_table",
    "print_json",
    "print_json_lines",
    "print_raw",
    "print_table",
    "progress_bar",
    "say",
    "short",
]

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: the last finished unit (a block height) and the last one."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def print_json(console: Console, obj: Any) -> None:
    """One JSON document on one line, nothing else."""
    print_raw(console, _dumps(obj) + "\n")


def print_json_lines(console: Console, items: Iterable[Any]) -> None:
    """One JSON document per line, written as they come (lists may be long)."""
    for item in items:
        console.file.write(_dumps(item) + "\n")
    console.file.flush()


def print_raw(console: Console, text: str) -> None:
    """Exactly ``text``: no markup, wrapping or highlighting."""
    console.file.write(text)
    console.file.flush()


def say(console: Console, text: str, *, style: str | None = None) -> None:
    """A plain human line; the text is literal (no markup), long lines are not cut."""
    console.print(Text(text, style=style or ""), soft_wrap=True)


def short(value: str, length: int = 12) -> str:
    return value[:length]


def kv_table(rows: Sequence[tuple[str, Any]], *, title: str | None = None) -> Table:
    """A two-column table for one object's fields."""
    table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(Text(key), Text("" if value is None else str(value)))
    return table


def print_table(
    console: Console,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
) -> None:
    table = Table(caption=caption, caption_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console.print(table)


@contextlib.contextmanager
def progress_bar(
    console: Console, description: str, *, enabled: bool = True
) -> Iterator[ProgressFn]:
    """A progress bar on ``console`` when it is a terminal, else a no-op callback."""
    if not enabled or not console.is_terminal:
        yield lambda done, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done + 1, total=total + 1)

        yield update
