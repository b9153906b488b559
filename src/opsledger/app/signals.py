"""Ending a server cleanly on SIGINT/SIGTERM, whenever the signal comes.

Every long-running command (``serve``, ``monitor``, ``gateway``, ``index``) runs uvicorn,
which holds its own handlers while it serves (graceful shutdown) and, once done,
re-raises the signal under the handlers it found. ``stop_on_signals`` installs handlers
that raise ``Stopped`` instead of the default SIGTERM action, which would kill the process
before its cleanup (closing the node, flushing the recorder) runs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Stopped", "stop_on_signals"]


class Stopped(BaseException):
    """Raised by our SIGINT/SIGTERM handler; a BaseException so no ``except Exception``
    on the way swallows it."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``Stopped``, caught here, so the ``finally`` blocks inside
    run. A signal before uvicorn's handlers are in place stops at once. Only possible in
    the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
