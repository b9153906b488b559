"""Delivery pipeline: jobs that contracts ask for, their executors and output parsers.

A contract only decides; the jobs it names (a security scan, a regression suite) run here
and come back as evidence (``scan.finished``, ``test.finished``) on the ledger. This package
reaches the ledger only through ``client.base.LedgerClient``.
"""

from opsledger.pipeline.jobs import (
    RECORD_TYPES,
    JobExecutor,
    JobRequest,
    JobResult,
    JobSpec,
    JobStatus,
    LocalExecutor,
)
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

__all__ = [
    "COUNT_PARSERS",
    "PARSERS",
    "RECORD_TYPES",
    "SCAN_PARSERS",
    "JobExecutor",
    "JobOutput",
    "JobRequest",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "LocalExecutor",
    "OutputParser",
    "Parsed",
    "get_parser",
    "parse_bandit",
    "parse_counts",
    "parse_exit_code",
    "parse_pip_audit",
]
