"""Process-wide logging, configured once by the entry point (CLI or server).

Logs go to stderr, never stdout: ``--json`` output must be the only thing on stdout.
The CLI logs warnings and errors (``--verbose``: everything); a server logs info.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.WARNING) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # sys.stderr is looked up per logger, not captured now: a test runner or a
        # daemonised process may replace it, and a closed stream must not kill a thread
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # full URLs otherwise
