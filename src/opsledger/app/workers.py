"""Composition for the job queue: settings from ``opsledger.yaml``, a worker wired to the
home's ledger and signer, and the submitting side for the runner and contract jobs.

.. code-block:: yaml

    jobs:
      queue: nats://127.0.0.1:4222   # route pipeline and contract jobs through JetStream
      name: default                  # the queue (one work-queue stream per name)
      ack_wait: 30s                  # redelivery after a silent worker; heartbeats at 1/3
      max_deliver: 5                 # deliveries before the queue gives up on a job
      bucket: opsledger-artifacts    # the Object Store bucket for inputs and artifacts
      result_ttl: 24h                # how long results stay readable in OPSLEDGER_RESULTS
      actor: ci-runner               # the identity workers sign with (role ci)

Everything but ``queue`` is optional. ``opsledger worker --nats URL`` works without the
section; its flags override it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsledger.app.config import load_section
from opsledger.client.base import LedgerClient, Signer
from opsledger.core import ConfigError
from opsledger.pipeline.logstore import PipelineStores
from opsledger.pipeline.queue import JobKind, QueueSettings
from opsledger.pipeline.queue_client import NatsDispatcher, QueueClient
from opsledger.pipeline.worker import ContractJobHandler, JobHandler, PipelineJobHandler, Worker

if TYPE_CHECKING:  # app.home imports app.services, which imports this module
    from opsledger.app.home import Home

__all__ = [
    "jobs_section",
    "queue_dispatcher",
    "queue_settings",
    "run_worker",
    "worker_handlers",
    "worker_signer",
]

_WORKER_KEYS = {"actor"}
log = logging.getLogger(__name__)


def jobs_section(home: Home) -> dict[str, Any]:
    """The raw ``jobs`` section (empty when absent)."""
    return load_section(home.config_path, "jobs")


def queue_settings(
    home: Home,
    *,
    url: str | None = None,
    queue: str | None = None,
    ack_wait: float | None = None,
    max_deliver: int | None = None,
) -> QueueSettings | None:
    """The queue settings from config with overrides; None when no queue is configured
    (no ``jobs.queue`` and no ``url``): jobs then run locally."""
    section = {k: v for k, v in jobs_section(home).items() if k not in _WORKER_KEYS}
    if not section.get("queue") and not url:
        return None
    where = f"{home.config_path}: jobs"
    return QueueSettings.from_mapping(
        section,
        where=where,
        url=url,
        queue=queue,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
    )


def worker_signer(home: Home, actor: str | None) -> Signer:
    """``--actor``, else ``OPSLEDGER_ACTOR``, else ``jobs.actor``, else the identity
    ``pipeline run`` signs with (a key in ``OPSLEDGER_KEY``/``OPSLEDGER_KEY_FILE``, or the
    home's ``ci`` service actor, made on first use): never a person's admin key."""
    configured = jobs_section(home).get("actor")
    if configured is not None and not isinstance(configured, str):
        raise ConfigError(f"{home.config_path}: jobs.actor must be a name", key="jobs.actor")
    name = actor or os.environ.get("OPSLEDGER_ACTOR") or configured
    if name:
        return home.signer(name)
    from opsledger.app.pipelines import pipeline_signer  # app.home imports this module

    return pipeline_signer(home)


def worker_handlers(
    client_factory: Callable[[], LedgerClient], signer: Signer
) -> dict[JobKind, JobHandler]:
    """One handler per message kind."""
    return {
        "contract": ContractJobHandler(client_factory, signer),
        "pipeline": PipelineJobHandler(client_factory, signer),
    }


def run_worker(
    home: Home,
    settings: QueueSettings,
    *,
    concurrency: int = 1,
    actor: str | None = None,
    name: str | None = None,
    scratch: Path | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT: the first signal stops taking jobs and lets
    running ones finish (recorded, acked); a second one exits at once (the queue
    redelivers what was running after ``ack_wait``)."""
    if concurrency < 1:
        raise ConfigError("--concurrency must be at least 1", key="concurrency")
    signer = worker_signer(home, actor)
    # Keys stay with the worker: jobs never see them (LocalExecutor and the pipeline
    # handler strip OPSLEDGER_KEY* from the job environment).
    kwargs: dict[str, Any] = {"concurrency": concurrency, "scratch": scratch}
    if name:
        kwargs["name"] = name
    worker = Worker(settings, worker_handlers(home.client, signer), **kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        state = {"signals": 0, "ready": False}

        def on_ready() -> None:
            state["ready"] = True
            if ready is not None:
                ready()

        def on_signal() -> None:
            state["signals"] += 1
            if state["signals"] == 1 and state["ready"]:
                worker.request_stop()  # finish running jobs first
            elif task is not None:
                task.cancel()  # still connecting, or asked twice: stop now

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        with contextlib.suppress(asyncio.CancelledError):
            await worker.run(ready=on_ready)

    asyncio.run(main())


@contextlib.contextmanager
def queue_dispatcher(
    home: Home,
    stores: PipelineStores,
    project: Path | None,
    *,
    commit: str = "unknown",
    exclude: Sequence[Path] = (),
) -> Iterator[NatsDispatcher | None]:
    """A ``NatsDispatcher`` for the pipeline runner when ``jobs.queue`` is configured
    (None otherwise: the runner then uses its local dispatcher). Closes the connection
    when the block ends."""
    settings = queue_settings(home)
    if settings is None:
        yield None
        return
    with QueueClient(settings, name=f"opsledger-runner {os.getpid()}") as client:
        yield NatsDispatcher(client, stores, project, commit=commit, exclude=exclude)
