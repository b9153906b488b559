"""Delivery pipeline: pipelines as code and their runner, the jobs that contracts ask for,
their executors and output parsers.

A contract only decides; the jobs it names (a security scan, a regression suite) run here
and come back as evidence (``scan.finished``, ``test.finished``) on the ledger. This package
reaches the ledger only through ``client.base.LedgerClient``.
"""

from opsledger.pipeline.dispatch import (
    JobDispatcher,
    LocalDispatcher,
    live_log_path,
    prepare_workdir,
)
from opsledger.pipeline.evidence import (
    FinishedJob,
    RecordedResults,
    record_job_outcome,
    record_job_outcomes,
    record_job_started,
    record_pipeline_finished,
    record_pipeline_started,
)
from opsledger.pipeline.execute import JobOutcome, OutcomeStatus, execute_job
from opsledger.pipeline.jobs import (
    RECORD_TYPES,
    JobExecutor,
    JobRequest,
    JobResult,
    JobSpec,
    JobStatus,
    LocalExecutor,
)
from opsledger.pipeline.logstore import BlobStore, PipelineStores
from opsledger.pipeline.parsers import (
    COUNT_PARSERS,
    PARSERS,
    SCAN_PARSERS,
    JobOutput,
    OutputParser,
    Parsed,
    get_parser,
    parse_bandit,
    parse_counts,
    parse_exit_code,
    parse_pip_audit,
)
from opsledger.pipeline.runner import (
    LedgerAccess,
    PerCallClient,
    PipelineRunner,
    RunEvent,
    RunResult,
    new_run_id,
)
from opsledger.pipeline.runstate import list_runs, load_run, request_cancel
from opsledger.pipeline.spec import (
    STAGES,
    EvidenceSpec,
    JobDef,
    PipelineSpec,
    SecretRef,
    Step,
    load_pipeline,
    parse_pipeline,
)

__all__ = [
    "COUNT_PARSERS",
    "PARSERS",
    "RECORD_TYPES",
    "SCAN_PARSERS",
    "STAGES",
    "BlobStore",
    "EvidenceSpec",
    "FinishedJob",
    "JobDef",
    "JobDispatcher",
    "JobExecutor",
    "JobOutcome",
    "JobOutput",
    "JobRequest",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "LedgerAccess",
    "LocalDispatcher",
    "LocalExecutor",
    "OutcomeStatus",
    "OutputParser",
    "Parsed",
    "PerCallClient",
    "PipelineRunner",
    "PipelineSpec",
    "PipelineStores",
    "RecordedResults",
    "RunEvent",
    "RunResult",
    "SecretRef",
    "Step",
    "execute_job",
    "get_parser",
    "list_runs",
    "live_log_path",
    "load_pipeline",
    "load_run",
    "new_run_id",
    "parse_bandit",
    "parse_counts",
    "parse_exit_code",
    "parse_pip_audit",
    "parse_pipeline",
    "prepare_workdir",
    "record_job_outcome",
    "record_job_outcomes",
    "record_job_started",
    "record_pipeline_finished",
    "record_pipeline_started",
    "request_cancel",
]
