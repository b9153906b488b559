"""Process-wide logging, configured once by the entry point (CLI or server).

Logs go to stderr, never stdout: ``--json`` output must be the only thing on stdout.
The CLI logs warnings and errors (``--verbose``: everything); a server logs info.

structlog is configured when it is imported, not before: importing it (and through it
``rich.traceback``) cost 35 ms of every CLI command, and most commands never log through
it. Standard logging is set up at once; a one-shot import hook configures structlog the
moment any module imports it, before that module can log (structlog's default would print
to stdout). Written by hand because the standard library offers no "after import" hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from types import ModuleType
from typing import Any

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # full URLs otherwise
    _ON_IMPORT.level = level
    if "structlog" in sys.modules:
        _configure_structlog(level)
    elif _ON_IMPORT not in sys.meta_path:
        sys.meta_path.insert(0, _ON_IMPORT)


def _configure_structlog(level: int) -> None:
    import structlog

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


class _ConfigureStructlogOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``structlog`` is first imported, it lets the normal
    finders locate it, runs it, then configures it, and removes itself."""

    level = logging.WARNING

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "structlog":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        level = self.level

        def exec_module(module: ModuleType) -> None:
            run(module)
            _configure_structlog(level)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_ON_IMPORT = _ConfigureStructlogOnImport()
