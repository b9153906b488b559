"""What runs beside a writable node: the contract runner, failed-verdict notifications
and the jobs contracts request. Wired here, in the composition root, from config:

.. code-block:: yaml

    notify:
      targets:
        - {kind: webhook, url: "http://127.0.0.1:9999/hook"}
        - {kind: slack, url: "${SLACK_WEBHOOK_URL}"}
    contracts:
      jobs:
        executor: local        # run requested jobs here (default: none, jobs are only logged)
        actor: ci-runner       # the service identity (role ci) that records their evidence
        workdir: .             # where the jobs run (the project to scan and test)

Notifications are delivered by a background ``Notifier``: a dead webhook never blocks the
ledger. Jobs run on a small thread pool for the same reason.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opsledger.app.config import load_section
from opsledger.client.base import Signer
from opsledger.client.local import LocalClient
from opsledger.contracts import Evaluation
from opsledger.core import ConfigError
from opsledger.ledger import ContractRunner, LedgerNode
from opsledger.notify import DELIVERY_LOG, Notifier, load_notify_targets, verdict_notification
from opsledger.pipeline import JobRequest, JobSpec, LocalExecutor

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
    if not isinstance(section, dict):
        raise ConfigError("contracts.jobs must be a mapping", key="contracts.jobs")
    unknown = sorted(set(section) - _JOB_KEYS)
    if unknown:
        raise ConfigError(
            f"contracts.jobs.{unknown[0]}: unknown key", key=f"contracts.jobs.{unknown[0]}"
        )
    if section.get("executor", "local") != "local":
        raise ConfigError(
            "contracts.jobs.executor: only local is available", key="contracts.jobs.executor"
        )
    actor = section.get("actor")
    if not isinstance(actor, str):
        raise ConfigError(
            "contracts.jobs.actor: the service identity that records job evidence",
            key="contracts.jobs.actor",
        )
    workdir = Path(section.get("workdir", ".")).expanduser()
    executor = LocalExecutor(
        LocalClient(node),
        Signer(actor, home.load_key(actor), ledger=node.checkpoint_origin),
        workdir=workdir,
    )
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
            pool.submit(_run_job, executor, request)

    runner.listeners.append(start_jobs)


def _run_job(executor: LocalExecutor, request: JobRequest) -> None:
    try:
        result = executor.run(request)
        log.info("contract job %s finished: %s", request.spec.name, result.status)
    except Exception:
        log.exception("contract job %s failed to run", request.spec.name)
