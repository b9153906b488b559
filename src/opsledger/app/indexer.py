"""Composition of the indexer: its config (``--config`` or the home's ``indexer`` section),
its recorder (the home's node actor, or nothing without a home), and running it with
SIGINT/SIGTERM stopping the follow loop cleanly between commits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsledger.client.base import NullRecorder, Recorder
from opsledger.core import ConfigError
from opsledger.indexer.backfill import Progress
from opsledger.indexer.config import IndexerConfig, load_file, parse
from opsledger.indexer.service import IndexerService, status

if TYPE_CHECKING:
    # The home (ledger node, stores) is only loaded when ``--home`` is given: importing it
    # cost ~50 ms of every ``opsledger index --once``.
    from opsledger.app.home import Home

__all__ = [
    "indexer_recorder",
    "indexer_status",
    "load_indexer_config",
    "run_indexer",
    "serve_index_api",
]


def load_indexer_config(config: Path | None, home: Home | None) -> IndexerConfig:
    """``config`` when given, else the ``indexer`` section of the home's opsledger.yaml."""
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"{config}: no such config file", key="--config")
        return load_file(config)
    if home is None or not home.config_path.exists():
        raise ConfigError(
            "no indexer config: pass --config FILE or add an indexer section to opsledger.yaml"
        )
    from opsledger.app.config import load_section  # only without --config

    section = load_section(home.config_path, "indexer")
    if not section:
        raise ConfigError(f"{home.config_path}: no indexer section", key="indexer")
    return parse(section, home.config_path)


def indexer_recorder(home: Home | None) -> Recorder:
    """Records as the home's node actor; ``NullRecorder`` when no home was given."""
    if home is None:
        return NullRecorder()
    return home.recorder(home.config().node)


def run_indexer(
    config: IndexerConfig,
    recorder: Recorder,
    *,
    once: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    listen: str | None = None,
) -> IndexerService:
    """Run until the head (``once``) or until SIGINT/SIGTERM; returns the finished service.

    With ``listen`` the query API (REST, GraphQL, /metrics) is served beside the loop from
    the same process, reading the tables as they fill."""
    # Prometheus metrics only when something can read them (the API, ``metrics:`` while
    # following); a plain ``--once`` skips them and the import of prometheus_client.
    with_metrics = bool(listen) or (bool(config.metrics) and not once)
    service = IndexerService(config, recorder, on_progress=on_progress, with_metrics=with_metrics)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        api: asyncio.Task[None] | None = None
        if listen:
            from opsledger.indexer.api import serve_api

            store = service.open_store()  # the tables exist before the API reads them
            registry = service.metrics.registry if service.metrics is not None else None
            api = asyncio.create_task(serve_api(store, listen, registry=registry))
        try:
            await service.run(once=once, stop=stop)
        finally:
            if api is not None:
                api.cancel()
                await asyncio.gather(api, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        recorder.close()
    return service


def serve_index_api(config: IndexerConfig, listen: str) -> None:
    """Serve the query API over an existing index until SIGINT/SIGTERM.

    The signals are taken by the event loop (as in ``run_indexer``) once it runs: the API's
    server leaves signals to its host, and a handler raising at an arbitrary point (here
    ``stop_on_signals``' ``Stopped``) could land inside one of asyncio's transport
    callbacks, which logs it as a write error and carries on, so the server never stopped
    (seen under load in ``test_sigkill_during_backfill_then_resume``). ``stop_on_signals``
    still covers the start-up, before the loop's handlers are in place."""
    from opsledger.app.signals import stop_on_signals
    from opsledger.indexer.api import serve_api
    from opsledger.indexer.storage import Store

    async def main(store: Store) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        api = asyncio.create_task(serve_api(store, listen))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({api, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if api.done():
                await api  # it could not start (port in use ...): say why
        finally:
            for task in (api, stopped):
                task.cancel()
            await asyncio.gather(api, stopped, return_exceptions=True)

    with stop_on_signals():
        store = Store.open(config.database)
        try:
            asyncio.run(main(store))
        finally:
            store.close()


def indexer_status(config: IndexerConfig) -> list[dict[str, Any]]:
    return [s.to_dict() for s in asyncio.run(status(config))]
