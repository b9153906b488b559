"""Logging is configured by the entry point; structlog only once something imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from opsledger.app.logs import configure_logging
configure_logging()
assert "structlog" not in sys.modules, "configuring logging must not import structlog"
import structlog
structlog.get_logger("t").warning("late import", k=1)
structlog.get_logger("t").info("below the level")
"""


def test_structlog_imported_later_logs_to_stderr_at_the_configured_level() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # --json output must stay the only thing on stdout
    assert "late import" in done.stderr and "k=1" in done.stderr
    assert "below the level" not in done.stderr
