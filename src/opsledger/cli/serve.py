"""``opsledger serve``: the HTTP API (and the single writer) for a home."""

from __future__ import annotations

from typing import Annotated

import typer

from opsledger.cli._state import get_state

__all__ = ["register"]


def serve(
    ctx: typer.Context,
    *,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help="HOST:PORT (default: api.listen, 127.0.0.1:8700)."),
    ] = None,
) -> None:
    """Serve the ledger's HTTP API; while it runs, other commands go through it.

    Example: opsledger serve --listen 127.0.0.1:8700
    """
    state = get_state(ctx)
    home = state.home
    address = listen or home.config().listen
    # Imported here: the API stack (FastAPI, uvicorn) is heavy and only this command
    # needs it.
    from opsledger.api.server import serve as run_server

    run_server(home, address)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
