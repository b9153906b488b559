"""The submitting side of the job queue: ``QueueClient`` (a NATS connection on its own
event-loop thread, for synchronous callers) and ``NatsDispatcher`` (the pipeline runner's
``JobDispatcher`` that sends jobs to ``opsledger worker``s). The names, settings, message
format and stream setup they share are in ``pipeline.queue``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from opsledger.core import InvalidInput, OpsledgerError
from opsledger.pipeline.artifacts_nats import (
    ArtifactStore,
    check_relpath,
    collect_files,
    file_digest,
)
from opsledger.pipeline.dispatch import IGNORED_DIRS
from opsledger.pipeline.execute import JobOutcome
from opsledger.pipeline.logstore import PipelineStores
from opsledger.pipeline.queue import (
    RESULTS_STREAM,
    JobMessage,
    QueueSettings,
    ResultMessage,
    connect,
    ensure_queue,
    pipeline_job_message,
)
from opsledger.pipeline.spec import JobDef

__all__ = ["NatsDispatcher", "QueueClient"]

T = TypeVar("T")


class QueueClient:
    """The submitting side, for synchronous callers (the pipeline runner's threads, the
    contract runner's listeners): a NatsClient connection on its own event-loop thread.

    ``submit`` uploads the input files, subscribes to the job's result subject, then
    publishes the job (de-duplicated by ``run/job``) and returns a future that resolves
    to the ``ResultMessage``: the first one a worker publishes, or one read back from the
    results stream, or an error result when the server gives up after ``max_deliver``
    deliveries (its MAX_DELIVERIES advisory names the message's stream sequence).
    """

    def __init__(self, settings: QueueSettings, *, name: str = "opsledger-dispatcher") -> None:
        self.settings = settings
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nats-dispatcher", daemon=True
        )
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._store: ArtifactStore | None = None
        self._by_seq: dict[int, asyncio.Future[ResultMessage]] = {}
        self._thread.start()
        try:
            self._call(self._connect(), timeout=30.0)
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self) -> None:
        self._nc = await connect(self.settings, name=self._name)
        self._js = self._nc.jetstream()
        await ensure_queue(self._js, self.settings)
        self._store = await ArtifactStore.open(self._js, self.settings.bucket)
        await self._nc.subscribe(self.settings.max_deliveries_advisory, cb=self._on_advisory)

    async def _on_advisory(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            seq = int(json.loads(msg.data)["stream_seq"])
            future = self._by_seq.pop(seq, None)
            if future is not None and not future.done():
                future.set_result(
                    ResultMessage(
                        run="",
                        job="",
                        outcome={},
                        tx_id=None,
                        worker="",
                        delivered=self.settings.max_deliver,
                        error=(
                            f"no worker finished the job after {self.settings.max_deliver}"
                            " deliveries"
                        ),
                    )
                )

    def upload(self, files: Mapping[str, Path]) -> str:
        """Store files in the Object Store; returns the manifest digest."""
        assert self._store is not None
        return self._call(self._store.put_tree(files))

    def download(self, manifest: str, dest: Path) -> dict[str, str]:
        """Materialise a manifest under ``dest``; returns it."""
        assert self._store is not None
        return self._call(self._store.get_tree(manifest, dest))

    def download_file(self, digest: str, dest: Path) -> None:
        """Write one object to ``dest``, checked against ``digest``."""
        assert self._store is not None
        self._call(self._store.get_file(digest, dest))

    def download_bytes(self, digest: str) -> bytes:
        assert self._store is not None
        return self._call(self._store.get_bytes(digest))

    def submit(
        self,
        message: JobMessage,
        *,
        on_output: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> concurrent.futures.Future[ResultMessage]:
        """Queue ``message``; the future resolves to its result (see the class doc).
        ``on_output`` gets the job's output lines live (best effort: lines published
        while this client was disconnected are only in the stored log); setting
        ``cancel`` asks the worker to cancel the job (it records ``cancelled``)."""
        return asyncio.run_coroutine_threadsafe(
            self._submit(message, on_output, cancel), self._loop
        )

    def run(self, message: JobMessage, timeout: float | None = None) -> ResultMessage:
        """``submit`` and wait (``timeout`` None: until the result or the give-up)."""
        return self.submit(message).result(timeout)

    def enqueue(self, message: JobMessage) -> int:
        """Publish without waiting for the result; returns the stream sequence."""
        return self._call(self._publish(message), timeout=30.0)

    async def _publish(self, message: JobMessage) -> int:
        assert self._js is not None
        ack = await self._js.publish(
            self.settings.subject,
            message.to_bytes(),
            stream=self.settings.stream,
            headers={"Nats-Msg-Id": message.msg_id},
        )
        return int(ack.seq)

    async def _watch_cancel(self, message: JobMessage, cancel: threading.Event) -> None:
        assert self._js is not None
        while not cancel.is_set():  # threading.Event: poll, the loop must not block
            await asyncio.sleep(0.2)
        await self._js.publish(self.settings.cancel_subject(message.run, message.job), b"cancel")

    async def _submit(
        self,
        message: JobMessage,
        on_output: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> ResultMessage:
        assert self._nc is not None
        assert self._js is not None
        subject = self.settings.result_subject(message.run, message.job)
        future: asyncio.Future[ResultMessage] = self._loop.create_future()

        async def on_result(msg: Msg) -> None:
            with contextlib.suppress(InvalidInput):
                result = ResultMessage.from_bytes(msg.data)
                if not future.done():
                    future.set_result(result)

        async def on_line(msg: Msg) -> None:
            if on_output is not None:
                with contextlib.suppress(Exception):  # a display error must not lose a job
                    on_output(msg.data.decode("utf-8", errors="replace"))

        sub = await self._nc.subscribe(subject, cb=on_result)
        lines = await self._nc.subscribe(
            self.settings.log_subject(message.run, message.job), cb=on_line
        )
        watcher = (
            asyncio.create_task(self._watch_cancel(message, cancel)) if cancel is not None else None
        )
        seq: int | None = None
        try:
            baseline, earlier = await self._last_result(subject)
            if earlier is not None and earlier.error is None:
                return earlier  # this (run, job) already finished: one result per job
            seq = await self._publish(message)
            self._by_seq[seq] = future
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), timeout=5.0)
                # Missed while reconnecting? The results stream keeps the last one (a
                # newer one than an earlier failed attempt's).
                stored_seq, stored = await self._last_result(subject)
                if stored is not None and stored_seq > baseline:
                    return stored
        finally:
            if watcher is not None:
                watcher.cancel()
            if seq is not None:
                self._by_seq.pop(seq, None)
            for subscription in (sub, lines):
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _last_result(self, subject: str) -> tuple[int, ResultMessage | None]:
        """The stored result for ``subject`` and its stream sequence (0: none)."""
        assert self._js is not None
        try:
            raw = await self._js.get_last_msg(RESULTS_STREAM, subject)
        except NotFoundError:
            return 0, None
        try:
            return int(raw.seq or 0), ResultMessage.from_bytes(raw.data or b"")
        except InvalidInput:
            return int(raw.seq or 0), None

    def close(self) -> None:
        async def _close() -> None:
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(_close(), timeout=10.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> QueueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KEY_ENV = frozenset({"OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE"})


class NatsDispatcher:
    """``JobDispatcher`` (see ``pipeline.dispatch``) that runs pipeline jobs on workers.

    ``dispatch`` snapshots the project (content-addressed: unchanged files are uploaded
    once for the whole run) plus the job's input artifacts into the Object Store, queues
    the job, streams its output lines to ``on_output``, forwards ``cancel``, waits for
    the result and, like ``LocalDispatcher``, leaves the log and every artifact in the
    runner's stores before it returns.

    What travels: the job definition, the input manifest digest, and only the variables
    the runner added on top of its own environment (``env`` minus ``os.environ``, never
    ``OPSLEDGER_KEY*``). Secret *values* never do: the worker resolves the job's secret
    references from its own environment, so ``secrets`` is deliberately unused here.
    The worker records the result on the ledger (exactly once per run and job); the
    runner's own ``record_job_outcome`` afterwards finds it and writes nothing new.
    """

    secrets_on_worker = True
    """Workers resolve these jobs' secrets: the runner need not have them."""

    def __init__(
        self,
        client: QueueClient,
        stores: PipelineStores,
        project: Path | None,
        *,
        commit: str = "unknown",
        exclude: Sequence[Path] = (),
    ) -> None:
        self.client = client
        self.stores = stores
        self.project = project
        self.commit = commit
        self.exclude = [stores.root, *exclude]

    def _project_files(self) -> dict[str, Path]:
        """The project's files as ``prepare_workdir`` would copy them."""
        if self.project is None:
            return {}
        return collect_files(self.project, ignore_dirs=IGNORED_DIRS, exclude=self.exclude)

    def dispatch(
        self,
        run_id: str,
        job: JobDef,
        inputs: Mapping[str, Path],
        *,
        env: Mapping[str, str],
        secrets: Mapping[str, str],
        on_output: Callable[[str], None],
        cancel: threading.Event,
    ) -> JobOutcome:
        del secrets  # resolved on the worker from its own environment (see the class doc)
        files = {**self._project_files(), **{check_relpath(k): Path(v) for k, v in inputs.items()}}
        manifest = self.client.upload(files)
        added = {k: v for k, v in env.items() if k not in _KEY_ENV and os.environ.get(k) != v}
        message = pipeline_job_message(
            run_id,
            job,
            inputs=manifest,
            artifact_inputs={rel: file_digest(Path(p)) for rel, p in inputs.items()},
            env=added,
            commit=self.commit,
        )
        result = self.client.submit(message, on_output=on_output, cancel=cancel).result()
        if result.error is not None:
            return JobOutcome(status="failure", reason=f"job queue: {result.error}")
        outcome = JobOutcome.from_dict(result.outcome)
        if outcome.log_digest and not self.stores.logs.has(outcome.log_digest):
            with contextlib.suppress(OpsledgerError):  # no log (a replayed result): keep going
                self.stores.logs.put_bytes(self.client.download_bytes(outcome.log_digest))
        missing = {d for d in outcome.artifacts.values() if not self.stores.artifacts.has(d)}
        if missing:
            self.stores.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.stores.root) as tmp:
                for digest in sorted(missing):
                    part = Path(tmp) / digest.removeprefix("sha256:")
                    self.client.download_file(digest, part)  # streamed, checked
                    self.stores.artifacts.put_file(part, digest)
        return outcome
