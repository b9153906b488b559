"""``opsledger worker``: take pipeline and contract jobs from a NATS JetStream queue."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.logs import configure_logging
from opsledger.app.workers import queue_settings, run_worker
from opsledger.cli._render import say
from opsledger.cli._state import get_state
from opsledger.core import ConfigError, InvalidInput
from opsledger.pipeline.queue import parse_seconds

__all__ = ["register"]


def worker(
    ctx: typer.Context,
    *,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="The NATS server (default: jobs.queue in opsledger.yaml).",
            show_default=False,
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option("--queue", help="The queue to serve (default: jobs.name, else default)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Jobs run at once.", min=1, max=256)
    ] = 1,
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            help="Sign as this identity (default: OPSLEDGER_ACTOR, jobs.actor, else ci).",
        ),
    ] = None,
    ack_wait: Annotated[
        str | None,
        typer.Option("--ack-wait", help="Redeliver a silent worker's job after this (30s)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="This worker's name in logs (host:pid).")
    ] = None,
    scratch: Annotated[
        Path | None,
        typer.Option("--scratch", help="Where job directories are made (system temp)."),
    ] = None,
) -> None:
    """Run jobs from the queue until stopped (Ctrl-C / SIGTERM: finish running jobs).

    A job is acknowledged only after its result is on the ledger; a worker killed
    mid-job has its job redelivered to another worker after --ack-wait.

    Example: opsledger worker --nats nats://127.0.0.1:4222 --queue default --concurrency 2
    """
    state = get_state(ctx)
    if nats_url is not None and not nats_url.startswith(("nats://", "tls://")):
        raise InvalidInput(f"--nats must be nats://HOST:PORT, got {nats_url!r}", field="nats")
    configure_logging(logging.DEBUG if state.verbose else logging.INFO)
    settings = queue_settings(
        state.home,
        url=nats_url,
        queue=queue,
        ack_wait=parse_seconds(ack_wait, key="--ack-wait") if ack_wait else None,
    )
    if settings is None:
        raise ConfigError("no job queue: pass --nats nats://HOST:PORT or set jobs.queue")

    def ready() -> None:
        say(
            state.err,
            f"worker ready: queue {settings.queue} on {settings.url}, concurrency {concurrency}",
        )

    run_worker(
        state.home,
        settings,
        concurrency=concurrency,
        actor=actor,
        name=name,
        scratch=scratch,
        ready=ready,
    )
    say(state.err, "worker stopped")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root command."""
    app.command("worker")(worker)
