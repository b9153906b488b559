"""A ledger client for long runs that must not hold a local home's writer lock."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from opsledger.client.base import LedgerClient

__all__ = ["PerCallClient"]


class PerCallClient:
    """A ``LedgerClient`` that opens a real one for each call and closes it right after,
    one call at a time: the run never holds a local home's writer lock between writes.

    ``session()`` keeps one client open for the calls its thread makes inside it (the
    scheduler's writes of one round: opening a local node costs tens of milliseconds);
    other threads wait for it to end."""

    def __init__(self, connect: Callable[[], LedgerClient]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._session: LedgerClient | None = None
        self._owner: int | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        if self._owner == threading.get_ident():
            yield
            return
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                if self._session is not None:
                    self._session.close()
                self._session = None
                self._owner = None

    @contextlib.contextmanager
    def _client(self) -> Iterator[LedgerClient]:
        if self._owner == threading.get_ident():
            if self._session is None:
                self._session = self._connect()  # opened on first use only
            yield self._session
            return
        with self._lock:
            client = self._connect()
            try:
                yield client
            finally:
                client.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "close":
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._client() as client:
                return getattr(client, name)(*args, **kwargs)

        return call

    def close(self) -> None:
        return None
