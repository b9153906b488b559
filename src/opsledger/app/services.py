"""What runs beside a writable node: the contract runner, failed-verdict notifications
and the jobs contracts request. Wired here, in the composition root, from config:

.. code-block:: yaml

    notify:
      targets:
        - {kind: webhook, url: "http://127.0.0.1:9999/hook"}
        - {kind: slack, url: "${SLACK_WEBHOOK_URL}"}
    contracts:
      jobs:
        executor: local        # local | queue (default: queue when jobs.queue is set)
        actor: ci-runner       # the service identity (role ci) that records their evidence
        workdir: .             # where the jobs run (the project to scan and test)
    jobs:
      queue: nats://127.0.0.1:4222   # optional: run them on `opsledger worker`s instead

Notifications are delivered by a background ``Notifier``: a dead webhook never blocks the
ledger. Jobs run on a small thread pool for the same reason. With a queue, the pool only
snapshots ``workdir`` into the Object Store and publishes the job: a worker runs it and
records its evidence (signed by the worker's identity), so closing the node never waits
for a scan to finish.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsledger.app.config import load_section
from opsledger.client.base import Signer
from opsledger.core import ConfigError
from opsledger.ledger import ContractRunner, LedgerNode
from opsledger.notify import DELIVERY_LOG, Notifier, load_notify_targets, verdict_notification

if TYPE_CHECKING:
    # Every CLI write opens a writable node and so runs attach_services: the job
    # machinery (NATS, aiohttp) is imported only when contracts.jobs is configured.
    from opsledger.contracts import Evaluation
    from opsledger.pipeline import JobRequest, LocalExecutor
    from opsledger.pipeline.queue import QueueSettings
    from opsledger.pipeline.queue_client import QueueClient

__all__ = ["attach_services"]

log = logging.getLogger(__name__)
_JOB_KEYS = {"executor", "actor", "workdir"}


class _Stoppable:
    def __init__(self, stop: Any) -> None:
        self.stop = stop


def attach_services(home: Any, node: LedgerNode, runner: ContractRunner) -> None:
    """Hook notifications and jobs onto the runner's verdicts, per the home's config."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs full URLs (webhook paths)
    targets = load_notify_targets(load_section(home.config_path, "notify") or None)
    if targets:
        notifier = Notifier(targets, log_path=home.path / DELIVERY_LOG)
        node.attach(_Stoppable(lambda: notifier.close(timeout=10.0)))

        def notify(evaluation: Evaluation, tx_id: str) -> None:
            request = evaluation.request
            message = verdict_notification(
                {
                    "type": "contract.verdict",
                    "subject": request["subject"],
                    "body": evaluation.body,
                },
                tx_id=tx_id,
            )
            if message is not None:
                notifier.notify(message)

        runner.listeners.append(notify)
    jobs = load_section(home.config_path, "contracts").get("jobs")
    if jobs:
        _attach_jobs(home, node, runner, jobs)


def _attach_jobs(home: Any, node: LedgerNode, runner: ContractRunner, section: Any) -> None:
    from opsledger.app.workers import queue_settings
    from opsledger.client.local import LocalClient
    from opsledger.pipeline import JobRequest, JobSpec, LocalExecutor

    if not isinstance(section, dict):
        raise ConfigError("contracts.jobs must be a mapping", key="contracts.jobs")
    unknown = sorted(set(section) - _JOB_KEYS)
    if unknown:
        raise ConfigError(
            f"contracts.jobs.{unknown[0]}: unknown key", key=f"contracts.jobs.{unknown[0]}"
        )
    settings = queue_settings(home)
    executor_kind = section.get("executor", "queue" if settings is not None else "local")
    if executor_kind not in ("local", "queue"):
        raise ConfigError("contracts.jobs.executor: local or queue", key="contracts.jobs.executor")
    if executor_kind == "queue" and settings is None:
        raise ConfigError(
            "contracts.jobs.executor: queue needs jobs.queue (nats://host:port)",
            key="contracts.jobs.executor",
        )
    workdir = Path(section.get("workdir", ".")).expanduser()
    run: Any
    if executor_kind == "queue":
        assert settings is not None  # checked above
        router = _QueueRouter(settings, workdir, exclude=[home.path])
        node.attach(_Stoppable(router.close))
        run = router.submit
    else:
        actor = section.get("actor")
        if not isinstance(actor, str):
            raise ConfigError(
                "contracts.jobs.actor: the service identity that records job evidence",
                key="contracts.jobs.actor",
            )
        executor = LocalExecutor(
            LocalClient(node),
            Signer(actor, home.load_key(actor), ledger=node.checkpoint_origin),
            workdir=workdir,
        )

        def run(request: JobRequest) -> None:
            _run_job(executor, request)

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="contract-job")
    node.attach(_Stoppable(lambda: pool.shutdown(wait=True)))

    def start_jobs(evaluation: Evaluation, tx_id: str) -> None:
        digest = evaluation.request["body"].get("digest")
        if not isinstance(digest, str):
            return
        for job in evaluation.jobs:
            spec = JobSpec(
                name=job.name,
                command=tuple(job.run),
                timeout=float(job.timeout),
                records=job.records,  # type: ignore[arg-type]
                parser=job.parser or "exit-code",
            )
            request = JobRequest(
                spec=spec,
                digest=digest,
                trigger=evaluation.body["trigger"],
                run=f"{tx_id[:12]}-{job.name}",
            )
            pool.submit(run, request)

    runner.listeners.append(start_jobs)


class _QueueRouter:
    """Sends contract jobs to the workers; connects on the first job, not on every node
    open (a CLI command opens a node per write)."""

    def __init__(self, settings: QueueSettings, workdir: Path, *, exclude: list[Path]) -> None:
        self.settings = settings
        self.workdir = workdir
        self.exclude = exclude
        self._client: QueueClient | None = None
        self._lock = threading.Lock()

    def submit(self, request: JobRequest) -> None:
        from opsledger.pipeline.artifacts_nats import collect_files
        from opsledger.pipeline.dispatch import IGNORED_DIRS
        from opsledger.pipeline.queue_client import QueueClient
        from opsledger.pipeline.worker import contract_job_message

        try:
            with self._lock:
                if self._client is None:
                    self._client = QueueClient(self.settings, name="opsledger-contract-jobs")
                client = self._client
            files = collect_files(self.workdir, ignore_dirs=IGNORED_DIRS, exclude=self.exclude)
            message = contract_job_message(request, inputs=client.upload(files))
            client.enqueue(message)
            log.info("contract job %s queued on %s", request.spec.name, self.settings.queue)
        except Exception:
            log.exception("contract job %s could not be queued", request.spec.name)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _run_job(executor: LocalExecutor, request: JobRequest) -> None:
    try:
        result = executor.run(request)
        log.info("contract job %s finished: %s", request.spec.name, result.status)
    except Exception:
        log.exception("contract job %s failed to run", request.spec.name)
