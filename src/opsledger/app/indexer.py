"""Composition of the indexer: its config (``--config`` or the home's ``indexer`` section),
its recorder (the home's node actor, or nothing without a home), and running it with
SIGINT/SIGTERM stopping the follow loop cleanly between commits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opsledger.app.config import load_section
from opsledger.app.home import Home
from opsledger.client.base import NullRecorder, Recorder
from opsledger.core import ConfigError
from opsledger.indexer.backfill import Progress
from opsledger.indexer.config import IndexerConfig, load_file, parse
from opsledger.indexer.service import IndexerService, status

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
    service = IndexerService(config, recorder, on_progress=on_progress)

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
            api = asyncio.create_task(serve_api(store, listen, registry=service.metrics.registry))
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
    """Serve the query API over an existing index until SIGINT/SIGTERM."""
    from opsledger.app.signals import stop_on_signals
    from opsledger.indexer.api import serve_api
    from opsledger.indexer.storage import Store

    store = Store.open(config.database)
    try:
        with stop_on_signals():
            asyncio.run(serve_api(store, listen))
    finally:
        store.close()


def indexer_status(config: IndexerConfig) -> list[dict[str, Any]]:
    return [s.to_dict() for s in asyncio.run(status(config))]
