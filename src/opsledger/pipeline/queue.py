"""The job queue on NatsClient JetStream: names, settings, the message format, stream setup.

One work-queue stream per queue (``OPSLEDGER_JOBS_<QUEUE>``, subject
``opsledger.jobs.<queue>``, retention ``workqueue``: a message is gone once acknowledged)
and one durable pull consumer (``workers_<queue>``) that every worker of the queue
shares, so each job goes to one worker at a time. The consumer uses explicit acks,
``ack_wait`` and a bounded ``max_deliver``:

- a worker acknowledges a job only after its result is on the ledger;
- while a job runs, the worker sends ``in_progress`` heartbeats (every ``ack_wait / 3``),
  so a live slow job is not redelivered;
- a worker that dies stops heartbeating; after ``ack_wait`` the server redelivers the job
  to another worker; after ``max_deliver`` deliveries it gives up and publishes a
  ``MAX_DELIVERIES`` advisory, which the dispatcher turns into a failed result.

Results go to a second stream, ``OPSLEDGER_RESULTS`` (subjects ``opsledger.results.>``,
limits retention, one message kept per subject, ``result_ttl``), on a subject per
(queue, run, job): the dispatcher subscribes before it publishes the job and also reads
the stream's last message for the subject, so a result published while it was
disconnected is still found. Only a worker that recorded (or found) the job's result on
the ledger publishes it, so every result a dispatcher sees is the one on the ledger.

Job messages carry references, never secret values (see ``JobMessage``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from opsledger.core import ConfigError, InvalidInput, UpstreamError
from opsledger.pipeline.artifacts_nats import (
    DEFAULT_BUCKET,
)
from opsledger.pipeline.spec import JobDef

__all__ = [
    "RESULTS_STREAM",
    "JobKind",
    "JobMessage",
    "QueueSettings",
    "ResultMessage",
    "connect",
    "ensure_queue",
    "parse_seconds",
    "pipeline_job_message",
]

JobKind = Literal["pipeline", "contract"]
RESULTS_STREAM = "OPSLEDGER_RESULTS"
MESSAGE_VERSION = 1
_QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_BUCKET_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SETTINGS_KEYS = frozenset({"queue", "name", "ack_wait", "max_deliver", "bucket", "result_ttl"})


def parse_seconds(value: Any, *, key: str) -> float:
    """``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: a duration like 30s, got {value!r}", key=key)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(f"{key}: a duration like 30s, got {value!r}", key=key)
    if not 0 < seconds <= 7 * 86400:
        raise ConfigError(f"{key}: must be between 0 and 7 days, got {value!r}", key=key)
    return seconds


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Where the queue is and how deliveries behave. From config (``jobs:`` in
    ``opsledger.yaml``) via ``from_mapping``; errors name ``<where>.<key>``."""

    url: str = "nats://127.0.0.1:4222"
    queue: str = "default"
    ack_wait: float = 30.0
    max_deliver: int = 5
    bucket: str = DEFAULT_BUCKET
    result_ttl: float = 86400.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("nats://", "tls://")):
            raise ConfigError(f"queue URL must be nats://host:port, got {self.url!r}", key="queue")
        if not isinstance(self.queue, str) or not _QUEUE_NAME.match(self.queue):
            raise ConfigError(
                f"queue name must match {_QUEUE_NAME.pattern}, got {self.queue!r}", key="name"
            )
        if not isinstance(self.bucket, str) or not _BUCKET_NAME.match(self.bucket):
            raise ConfigError(f"bucket must match {_BUCKET_NAME.pattern}", key="bucket")
        if (
            isinstance(self.max_deliver, bool)
            or not isinstance(self.max_deliver, int)
            or not (1 <= self.max_deliver <= 100)
        ):
            raise ConfigError("max_deliver must be an integer from 1 to 100", key="max_deliver")
        parse_seconds(self.ack_wait, key="ack_wait")
        parse_seconds(self.result_ttl, key="result_ttl")

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, where: str = "jobs", **overrides: Any
    ) -> QueueSettings:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping", key=where)
        unknown = sorted(set(data) - _SETTINGS_KEYS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key", key=f"{where}.{unknown[0]}")
        values: dict[str, Any] = {}
        try:
            if "queue" in data:
                values["url"] = data["queue"]
            if "name" in data:
                values["queue"] = data["name"]
            for key in ("ack_wait", "result_ttl"):
                if key in data:
                    values[key] = parse_seconds(data[key], key=key)
            for key in ("max_deliver", "bucket"):
                if key in data:
                    values[key] = data[key]
            values.update({k: v for k, v in overrides.items() if v is not None})
            return cls(**values)
        except ConfigError as exc:
            key = f"{where}.{exc.details.get('key', '')}".rstrip(".")
            raise ConfigError(f"{key}: {exc.message}", key=key) from None

    @property
    def stream(self) -> str:
        return "OPSLEDGER_JOBS_" + self.queue.upper().replace("-", "_")

    @property
    def subject(self) -> str:
        return f"opsledger.jobs.{self.queue}"

    @property
    def consumer(self) -> str:
        return "workers_" + self.queue.replace("-", "_")

    @property
    def heartbeat(self) -> float:
        """How often a worker tells the server a job is still being worked on."""
        return max(0.2, self.ack_wait / 3)

    def result_subject(self, run: str, job: str) -> str:
        return f"opsledger.results.{self.queue}.{_token(run, job)}"

    def cancel_subject(self, run: str, job: str) -> str:
        """Kept in the results stream too, so a job cancelled before a worker took it
        is seen by that worker when it does."""
        return f"opsledger.results.{self.queue}.{_token(run, job)}.cancel"

    def log_subject(self, run: str, job: str) -> str:
        """Live output lines (already masked); core NATS, not stored."""
        return f"opsledger.logs.{self.queue}.{_token(run, job)}"

    @property
    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer}"


def _token(run: str, job: str) -> str:
    # Run ids and job names may hold dots, brackets, '=': not subject tokens.
    return hashlib.sha256(f"{run}\0{job}".encode()).hexdigest()[:32]


def _str_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInput(f"job message: {name} must map strings to strings", field=name)
    return dict(value)


@dataclass(frozen=True, slots=True)
class JobMessage:
    """One job on the queue.

    ``spec`` is the serialised job definition (a pipeline ``JobDef`` or a contract
    ``JobSpec`` + request, per ``kind``); ``inputs`` the digest of the manifest of files
    the job starts with (project snapshot and needed artifacts, in the Object Store);
    ``env`` plain variables; ``secrets`` *references* (``NAME: env:VAR`` or
    ``file:/path``) that each worker resolves from its own environment: secret values
    never travel through the queue.
    """

    kind: JobKind
    run: str
    job: str
    spec: dict[str, Any]
    inputs: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    queued_at: float = field(default_factory=time.time)

    @property
    def msg_id(self) -> str:
        """JetStream de-duplication id: publishing this message twice (a retried publish)
        queues it once; a new attempt at the same job is a new message."""
        return f"{self.run}/{self.job}/{self.queued_at!r}"

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": MESSAGE_VERSION,
                "kind": self.kind,
                "run": self.run,
                "job": self.job,
                "spec": self.spec,
                "inputs": self.inputs,
                "env": self.env,
                "secrets": self.secrets,
                "queued_at": self.queued_at,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> JobMessage:
        try:
            raw = json.loads(data)
        except ValueError:
            raise InvalidInput("job message is not JSON", field="message") from None
        if not isinstance(raw, dict) or raw.get("v") != MESSAGE_VERSION:
            raise InvalidInput(f"job message must be version {MESSAGE_VERSION}", field="v")
        kind = raw.get("kind")
        if kind not in ("pipeline", "contract"):
            raise InvalidInput(f"job message: unknown kind {kind!r}", field="kind")
        for name in ("run", "job"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise InvalidInput(f"job message: {name} must be a string", field=name)
        if not isinstance(raw.get("spec"), dict):
            raise InvalidInput("job message: spec must be an object", field="spec")
        inputs = raw.get("inputs")
        if inputs is not None and not isinstance(inputs, str):
            raise InvalidInput("job message: inputs must be a digest", field="inputs")
        queued = raw.get("queued_at", 0.0)
        return cls(
            kind=kind,
            run=raw["run"],
            job=raw["job"],
            spec=raw["spec"],
            inputs=inputs,
            env=_str_map(raw.get("env", {}), "env"),
            secrets=_str_map(raw.get("secrets", {}), "secrets"),
            queued_at=float(queued) if isinstance(queued, int | float) else 0.0,
        )


@dataclass(frozen=True, slots=True)
class ResultMessage:
    """What a worker publishes once the job's result is on the ledger.

    ``outcome`` is the serialised outcome (pipeline ``JobOutcome`` or contract
    ``JobResult`` summary); ``tx_id`` the ledger transaction holding it; ``artifacts``
    the manifest digest of the files the job produced (None when it made none);
    ``replayed`` is true when the worker found the result already on the ledger (a
    redelivery) rather than running the job; ``error`` set when the queue gave up.
    """

    run: str
    job: str
    outcome: dict[str, Any]
    tx_id: str | None
    worker: str
    delivered: int = 1
    artifacts: str | None = None
    replayed: bool = False
    error: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": MESSAGE_VERSION,
                "run": self.run,
                "job": self.job,
                "outcome": self.outcome,
                "tx_id": self.tx_id,
                "worker": self.worker,
                "delivered": self.delivered,
                "artifacts": self.artifacts,
                "replayed": self.replayed,
                "error": self.error,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ResultMessage:
        try:
            raw = json.loads(data)
        except ValueError:
            raise InvalidInput("result message is not JSON", field="message") from None
        if not isinstance(raw, dict) or raw.get("v") != MESSAGE_VERSION:
            raise InvalidInput(f"result message must be version {MESSAGE_VERSION}", field="v")
        if not isinstance(raw.get("outcome"), dict):
            raise InvalidInput("result message: outcome must be an object", field="outcome")
        return cls(
            run=str(raw.get("run", "")),
            job=str(raw.get("job", "")),
            outcome=raw["outcome"],
            tx_id=raw.get("tx_id") if isinstance(raw.get("tx_id"), str) else None,
            worker=str(raw.get("worker", "")),
            delivered=int(raw.get("delivered") or 1),
            artifacts=raw.get("artifacts") if isinstance(raw.get("artifacts"), str) else None,
            replayed=bool(raw.get("replayed", False)),
            error=raw.get("error") if isinstance(raw.get("error"), str) else None,
        )


def pipeline_job_message(
    run_id: str,
    job: JobDef,
    *,
    inputs: str | None,
    artifact_inputs: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    commit: str = "unknown",
) -> JobMessage:
    """The queue message for one pipeline job. ``inputs`` is the manifest digest of the
    files it starts with; ``artifact_inputs`` ({relpath: digest}) the needed jobs'
    artifacts among them (the subject of its test/scan evidence); ``env`` plain
    variables on top of the job's own. Secrets travel as the job's references."""
    data = job.to_dict()
    return JobMessage(
        kind="pipeline",
        run=run_id,
        job=job.name,
        spec={"job": data, "artifact_inputs": dict(artifact_inputs or {}), "commit": commit},
        inputs=inputs,
        env={**dict(env or {}), **dict(job.env)},
        secrets=dict(data["secrets"]),
    )


async def connect(settings: QueueSettings, *, name: str, timeout: float = 10.0) -> NatsClient:
    """Connect, reconnecting forever once connected; a server that cannot be reached
    within ``timeout`` seconds at start is an ``UpstreamError`` naming the URL (nats-py
    would otherwise retry the first connection forever too)."""

    async def _quiet(_: Exception) -> None:
        return None  # nats-py logs every reconnect attempt otherwise

    try:
        return await asyncio.wait_for(
            nats.connect(
                settings.url,
                name=name,
                connect_timeout=min(2.0, timeout),
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=_quiet,
            ),
            timeout=timeout,
        )
    except TimeoutError as exc:
        raise UpstreamError(
            f"cannot reach the job queue at {settings.url}: no answer within {timeout:g} s"
        ) from exc
    except Exception as exc:  # nats raises several unrelated types here
        raise UpstreamError(
            f"cannot reach the job queue at {settings.url}: {str(exc) or type(exc).__name__}"
        ) from exc


async def ensure_queue(js: JetStreamContext, settings: QueueSettings) -> None:
    """Create (or update) the work-queue stream, its shared consumer and the results
    stream. Idempotent: every worker and dispatcher calls it on start."""
    jobs = StreamConfig(
        name=settings.stream,
        subjects=[settings.subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=120.0,
    )
    results = StreamConfig(
        name=RESULTS_STREAM,
        subjects=["opsledger.results.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.result_ttl,
        max_msgs_per_subject=1,
    )
    for config in (jobs, results):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)  # exists with other settings: bring it in line
    consumer = ConsumerConfig(
        durable_name=settings.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        filter_subject=settings.subject,
        max_ack_pending=1000,
    )
    await js.add_consumer(settings.stream, consumer)
