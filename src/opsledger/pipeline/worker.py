"""The worker loop: take jobs from the queue, run them, record, publish, and only then ack.

For each message a worker:

1. decodes it (a malformed message is terminated, never retried: retrying cannot fix it);
2. materialises the job's inputs (the manifest in the Object Store) in a fresh directory;
3. hands it to the ``JobHandler`` for its kind, in a thread, while an ``in_progress``
   heartbeat every ``ack_wait / 3`` keeps the server from redelivering a live job;
4. publishes the result on the job's result subject, and
5. acknowledges the message (``ack_sync``: the server confirms).

Handlers check the ledger before running: a job whose result is already recorded (the
previous worker died between recording and acking) is not run again; its recorded result
is published and the message acked. That is why delivery is at-least-once while the
ledger holds exactly one result per (run, job). An error before the result is recorded
(the ledger unreachable, inputs missing) naks the message for redelivery, up to
``max_deliver``; on the last delivery the worker publishes an error result so the
dispatcher does not wait forever.

Secrets never travel in messages: a message names them (``env:VAR``, ``file:/path``) and
the worker resolves the references from its own environment (``resolve_secret_refs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from opsledger.core import InvalidInput, OpsledgerError
from opsledger.pipeline.artifacts_nats import ArtifactStore
from opsledger.pipeline.handlers import (
    ContractJobHandler,
    Handled,
    JobHandler,
    OnDemandClient,
    PipelineJobHandler,
    Upload,
    contract_job_message,
    resolve_secret_refs,
)
from opsledger.pipeline.queue import (
    RESULTS_STREAM,
    JobKind,
    JobMessage,
    QueueSettings,
    ResultMessage,
    connect,
    ensure_queue,
)

__all__ = [
    "ContractJobHandler",
    "Handled",
    "JobHandler",
    "OnDemandClient",
    "PipelineJobHandler",
    "Upload",
    "Worker",
    "contract_job_message",
    "default_worker_name",
    "resolve_secret_refs",
]


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _ThreadUpload:
    def __init__(
        self,
        store: ArtifactStore,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[bytes], Any],
    ) -> None:
        self._store = store
        self._loop = loop
        self._publish = publish

    def output(self, line: str) -> None:
        data = line.encode("utf-8", errors="replace")
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._publish(data)))

    def files(self, files: Mapping[str, Path]) -> str | None:
        if not files:
            return None
        return asyncio.run_coroutine_threadsafe(self._store.put_tree(files), self._loop).result()

    def data(self, data: bytes) -> str:
        return asyncio.run_coroutine_threadsafe(self._store.put_bytes(data), self._loop).result()

    def file(self, path: Path) -> str:
        return asyncio.run_coroutine_threadsafe(self._store.put_file(path), self._loop).result()

    def manifest(self, entries: Mapping[str, str]) -> str | None:
        if not entries:
            return None
        text = json.dumps(dict(entries), sort_keys=True).encode()
        return self.data(text)


@dataclass
class Worker:
    """Takes jobs from one queue with ``concurrency`` parallel slots until stopped.

    ``handlers`` maps a message kind to its ``JobHandler``; ``scratch`` is where job
    directories are made (default: the system temp dir). ``log`` is a structlog logger.
    """

    settings: QueueSettings
    handlers: Mapping[JobKind, JobHandler]
    name: str = field(default_factory=default_worker_name)
    concurrency: int = 1
    scratch: Path | None = None
    log: Any = field(default_factory=lambda: structlog.get_logger("opsledger.worker"))
    _stop: asyncio.Event | None = None
    _nc: NatsClient | None = None
    _js: JetStreamContext | None = None
    _store: ArtifactStore | None = None

    def request_stop(self) -> None:
        """Stop taking jobs; jobs already running finish, are recorded and acked."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, *, ready: Callable[[], None] | None = None) -> None:
        self._stop = asyncio.Event()
        nc = await connect(self.settings, name=f"opsledger-worker {self.name}")
        self._nc = nc
        try:
            self._js = nc.jetstream()
            await ensure_queue(self._js, self.settings)
            self._store = await ArtifactStore.open(self._js, self.settings.bucket)
            sub = await self._js.pull_subscribe_bind(self.settings.consumer, self.settings.stream)
            self.log.info(
                "worker.ready",
                worker=self.name,
                queue=self.settings.queue,
                concurrency=self.concurrency,
            )
            if ready is not None:
                ready()
            await asyncio.gather(*(self._slot(sub) for _ in range(max(1, self.concurrency))))
        finally:
            # Not drain(): it waits forever on a pull subscription's queue (nats-py).
            # Every job taken has been acked or nak'ed by now.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=10)

    async def _slot(self, sub: JetStreamContext.PullSubscription) -> None:
        assert self._stop is not None  # set by run()
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            for msg in msgs:
                try:
                    await self._handle(msg)
                except Exception as exc:  # keep serving; the queue redelivers the job
                    self.log.error("job.crashed", worker=self.name, error=repr(exc))

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            with contextlib.suppress(Exception):  # a missed beat only risks a redelivery
                await msg.in_progress()

    def _upload(self, loop: asyncio.AbstractEventLoop, message: JobMessage) -> Upload:
        assert self._store is not None
        assert self._nc is not None
        nc = self._nc
        subject = self.settings.log_subject(message.run, message.job)

        async def publish(data: bytes) -> None:
            with contextlib.suppress(Exception):  # live output is best effort
                await nc.publish(subject, data)

        return _ThreadUpload(self._store, loop, publish)

    async def _watch_cancel(self, message: JobMessage, cancel: threading.Event) -> Any:
        """Set ``cancel`` when the submitter asks (now, or already did before we took it)."""
        assert self._nc is not None
        assert self._js is not None
        subject = self.settings.cancel_subject(message.run, message.job)

        async def on_cancel(_: Msg) -> None:
            cancel.set()

        sub = await self._nc.subscribe(subject, cb=on_cancel)
        with contextlib.suppress(NotFoundError):
            await self._js.get_last_msg(RESULTS_STREAM, subject)
            cancel.set()
        return sub

    async def _handle(self, msg: Msg) -> None:
        assert self._js is not None
        assert self._store is not None
        delivered = msg.metadata.num_delivered or 1
        try:
            message = JobMessage.from_bytes(msg.data)
        except InvalidInput as exc:
            self.log.error("job.malformed", worker=self.name, reason=exc.message)
            await msg.term()
            return
        handler = self.handlers.get(message.kind)
        log = self.log.bind(worker=self.name, run=message.run, job=message.job)
        if handler is None:
            log.error("job.unsupported", kind=message.kind)
            await self._publish_error(message, f"no worker handles {message.kind} jobs", delivered)
            await msg.term()
            return
        log.info("job.taken", delivered=delivered)
        beat = asyncio.create_task(self._heartbeat(msg))
        cancel = threading.Event()
        cancel_sub: Any = None
        workdir = Path(tempfile.mkdtemp(prefix="opsledger-job-", dir=self.scratch))
        try:
            cancel_sub = await self._watch_cancel(message, cancel)
            if message.inputs:
                await self._store.get_tree(message.inputs, workdir)
            handled = await asyncio.to_thread(
                handler.handle,
                message,
                workdir=workdir,
                cancel=cancel,
                upload=self._upload(asyncio.get_running_loop(), message),
                worker=self.name,
            )
        except Exception as exc:
            reason = exc.message if isinstance(exc, OpsledgerError) else repr(exc)
            log.warning("job.error", reason=reason, delivered=delivered)
            if delivered >= self.settings.max_deliver or isinstance(exc, InvalidInput):
                await self._publish_error(message, reason, delivered)
                await msg.term()
            else:
                await msg.nak(delay=1.0)
            return
        finally:
            beat.cancel()
            cancel.set()
            if cancel_sub is not None:
                with contextlib.suppress(Exception):
                    await cancel_sub.unsubscribe()
            shutil.rmtree(workdir, ignore_errors=True)
        result = ResultMessage(
            run=message.run,
            job=message.job,
            outcome=handled.outcome,
            tx_id=handled.tx_id,
            worker=self.name,
            delivered=delivered,
            artifacts=handled.artifacts,
            replayed=handled.replayed,
        )
        try:
            await self._js.publish(
                self.settings.result_subject(message.run, message.job), result.to_bytes()
            )
            await msg.ack_sync()
        except Exception as exc:
            # Recorded but not acked: the next delivery finds the result on the ledger,
            # publishes it and acks, without running the job again.
            log.warning("job.ack_failed", tx_id=handled.tx_id, error=repr(exc))
            return
        log.info("job.acked", tx_id=handled.tx_id, replayed=handled.replayed)

    async def _publish_error(self, message: JobMessage, reason: str, delivered: int) -> None:
        assert self._js is not None
        result = ResultMessage(
            run=message.run,
            job=message.job,
            outcome={},
            tx_id=None,
            worker=self.name,
            delivered=delivered,
            error=reason,
        )
        await self._js.publish(
            self.settings.result_subject(message.run, message.job), result.to_bytes()
        )
