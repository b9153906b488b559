"""What the indexer writes on the ledger, through the ``Recorder`` protocol.

Subjects are ``chain:<name>`` for reorgs and ``service:indexer`` for runs. The database
URL is recorded without its password (secrets are never recorded).

The transaction models (and through them Ed25519 and the JSON Schemas) are imported when
something is recorded, and nothing is built for a ``NullRecorder``: ``opsledger index
--once`` without a home records nothing, and importing them cost ~30 ms of its start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from opsledger.client.base import NullRecorder, Recorder
from opsledger.indexer.follow import Reorg

__all__ = ["record_reorg", "record_started", "redact_url"]


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def record_started(
    recorder: Recorder, digest: str, chains: Sequence[str], database: str, once: bool
) -> None:
    if isinstance(recorder, NullRecorder):
        return
    from opsledger.core import Subject

    recorder.record(
        "indexer.started",
        Subject("service", "indexer"),
        {
            "config_digest": digest,
            "chains": list(chains),
            "database": redact_url(database),
            "once": once,
        },
    )


def record_reorg(recorder: Recorder, reorg: Reorg) -> None:
    if isinstance(recorder, NullRecorder):
        return
    from opsledger.core import Subject

    recorder.record(
        "indexer.reorg",
        Subject("chain", reorg.chain),
        {
            "chain": reorg.chain,
            "depth": reorg.depth,
            "fork_block": reorg.fork_block,
            "replaced": list(reorg.replaced),
            "old_height": reorg.old_height,
            "new_head": reorg.new_head,
            "removed_rows": reorg.removed_rows,
        },
    )
