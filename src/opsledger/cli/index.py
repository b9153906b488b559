"""``opsledger index``: index contract events from EVM chains into SQL tables."""

from __future__ import annotations

import atexit
import functools
import gc
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from opsledger.app.indexer import (
    indexer_recorder,
    indexer_status,
    load_indexer_config,
    run_indexer,
    serve_index_api,
)
from opsledger.cli._render import print_json_lines, print_table
from opsledger.cli._state import get_state
from opsledger.indexer.backfill import Progress as BackfillProgress

__all__ = ["index_app", "register"]

index_app = typer.Typer(
    help="Chain event indexer: backfill, follow the head, roll back reorgs.",
    invoke_without_command=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="A YAML file with the indexer section (default: opsledger.yaml's)."
    ),
]


def _home_given(ctx: typer.Context) -> bool:
    # By name: typer may carry its own copy of click's ParameterSource enum.
    source = ctx.find_root().get_parameter_source("home")
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


@index_app.callback()
def index(
    ctx: typer.Context,
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Stop at the head instead of following it.")
    ] = False,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="Serve the query API (REST /api/v1, GraphQL /graphql) on HOST:PORT while"
            " indexing.",
        ),
    ] = None,
) -> None:
    """Backfill every configured chain, then follow the head (Ctrl-C stops).

    Example: opsledger index --config indexer.yaml --once
    """
    if ctx.invoked_subcommand is not None:
        return
    _freeze_heap_at_exit()
    state = get_state(ctx)
    home = state.home if _home_given(ctx) else None
    loaded = load_indexer_config(config, home)
    recorder = indexer_recorder(home)
    # Chain names are the user's data, never Rich markup or emoji codes (which would
    # also import Rich's 3 ms emoji table at every run).
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[events]} events", markup=False),
        TimeElapsedColumn(),
        console=state.err,
        transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(p: BackfillProgress) -> None:
            total = max(1, p.target - p.start + 1)
            if p.chain not in tasks:
                tasks[p.chain] = bar.add_task(p.chain, total=total, events=0)
            bar.update(
                tasks[p.chain], total=total, completed=p.height - p.start + 1, events=p.events
            )

        service = run_indexer(loaded, recorder, once=once, on_progress=progress, listen=listen)
    for chain, rpc in service.rpcs.items():
        state.err.print(
            f"{chain}: {rpc.stats.calls} RPC calls, {rpc.stats.errors} errors, "
            f"{sum(1 for r in service.reorgs if r.chain == chain)} reorgs",
            markup=False,
            emoji=False,
        )


@functools.cache  # register once per process
def _freeze_heap_at_exit() -> None:
    """At interpreter exit, move every live object out of the cyclic collector's reach.

    Why: the interpreter's own collections while it shuts down scan everything still alive
    (the CLI's modules, typer, rich, pydantic, the decoder caches): measured 50-100 ms of
    every ``opsledger index --once``, for memory the OS reclaims anyway. Objects are still
    freed by reference counting; only garbage cycles left at exit are not collected. An
    atexit hook, so a test runner invoking the command in-process is not affected.
    """
    atexit.register(gc.freeze)


@index_app.command("serve")
def serve(
    ctx: typer.Context,
    config: ConfigOption = None,
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT for the query API.")
    ] = "127.0.0.1:8547",
) -> None:
    """Serve the query API (REST /api/v1/tables, GraphQL /graphql) over an existing index.

    Example: opsledger index serve --config indexer.yaml --listen 127.0.0.1:8547
    """
    state = get_state(ctx)
    home = state.home if _home_given(ctx) else None
    loaded = load_indexer_config(config, home)
    state.err.print(f"index API on http://{listen} (REST /api/v1/tables, GraphQL /graphql)")
    serve_index_api(loaded, listen)


@index_app.command("status")
def index_status(
    ctx: typer.Context,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Per chain: head, indexed height, lag, events, events/s, reorgs.

    Example: opsledger index status --config indexer.yaml
    """
    state = get_state(ctx)
    home = state.home if _home_given(ctx) else None
    rows = indexer_status(load_indexer_config(config, home))
    if as_json:
        print_json_lines(state.out, rows)
        return
    print_table(
        state.out,
        ["chain", "head", "height", "lag", "events", "events/s", "reorgs", "max depth"],
        [
            (
                r["chain"],
                f"{r['head']}" + ("" if r["head_live"] else " (last seen)"),
                r["height"],
                r["lag"],
                r["events"],
                r["events_per_second"],
                r["reorgs"],
                r["max_reorg_depth"],
            )
            for r in rows
        ],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
