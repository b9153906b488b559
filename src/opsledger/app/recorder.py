"""``BackgroundRecorder``: service evidence onto the ledger without holding it.

A long-running service (gateway, indexer, monitor, worker) writes rarely but lives long.
Holding the home's writer lock for its lifetime would lock every other writer out (an
``opsledger record`` would wait, then fail), so the recorder opens a client only for
each batch: over HTTP when ``opsledger serve`` runs, else an in-process node that is
closed again (about 35 ms per batch here). Records are signed when queued, so their
``ts`` is when the event happened, and submitted in order by one thread; a failed batch
is retried with backoff and nothing queued is dropped while the process lives.
``flush`` waits for the queue to drain; ``close`` flushes first.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from opsledger.client.base import LedgerClient, Signer, resign_past_ledger
from opsledger.core import OpsledgerError, ReplayRejected, SignedTransaction, Subject

__all__ = ["BackgroundRecorder"]

log = structlog.get_logger(__name__)


class BackgroundRecorder:
    """Queue, sign and submit service evidence from one background thread."""

    def __init__(
        self,
        open_client: Callable[[], LedgerClient],
        signer: Signer,
        *,
        max_batch: int = 256,
        retry_max_wait: float = 5.0,
    ) -> None:
        self._open_client = open_client
        self._signer = signer
        self._max_batch = max_batch
        self._retry_max_wait = retry_max_wait
        self._queue: queue.Queue[SignedTransaction | None] = queue.Queue()
        self._errors: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ledger-recorder", daemon=True)
        self._thread.start()

    def record(
        self,
        tx_type: str,
        subject: Subject,
        body: dict[str, Any],
        refs: Sequence[str] = (),
    ) -> None:
        if self._closed:
            raise RuntimeError("recorder is closed")
        # sign now: a schema error surfaces in the caller, and ts is the event's time
        self._queue.put(self._signer.sign(tx_type, subject, body, refs))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is on the ledger."""
        done = threading.Event()

        def wait_for_queue() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait_for_queue, daemon=True).start()
        if not done.wait(timeout):
            raise TimeoutError(f"ledger recorder: {self._queue.qsize()} record(s) still queued")

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout)

    @property
    def errors(self) -> list[str]:
        """Records the ledger refused for good (schema, permission): logged, kept here."""
        return list(self._errors)

    def _take_batch(self) -> list[SignedTransaction] | None:
        first = self._queue.get()
        if first is None:
            self._queue.task_done()
            return None
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # keep the stop marker for the next round
                self._queue.task_done()
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            wait = 0.1
            while True:
                try:
                    self._submit(batch)
                    break
                except (OpsledgerError, OSError) as exc:
                    log.warning("ledger recorder retrying", error=str(exc), records=len(batch))
                    time.sleep(wait)
                    wait = min(wait * 2, self._retry_max_wait)
            for _ in batch:
                self._queue.task_done()

    def _submit(self, batch: list[SignedTransaction]) -> None:
        client = self._open_client()
        try:
            outcomes = list(client.submit_many(batch))
            collided = [i for i, o in enumerate(outcomes) if isinstance(o, ReplayRejected)]
            if collided:
                # Another writer signed as this actor in the same instant (services sign
                # as the node, and so does the contract runner recording verdicts): the
                # node refused ours as a replay. Re-sign past the ledger's last nonce,
                # once, as ``submit_signed`` does; dropping them would lose evidence.
                again = resign_past_ledger(client, self._signer, [batch[i] for i in collided])
                for i, outcome in zip(collided, client.submit_many(again), strict=True):
                    outcomes[i] = outcome
        finally:
            with contextlib.suppress(Exception):
                client.close()
        for stx, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, OpsledgerError):
                # refused for good: retrying the same bytes cannot succeed
                message = f"{stx.tx.type}: {outcome.message}"
                self._errors.append(message)
                log.error("ledger refused a service record", error=message)
