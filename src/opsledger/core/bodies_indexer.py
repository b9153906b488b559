"""Bodies of the transactions the indexer writes.

``indexer.started``: a run began, with the digest of its config (what was indexed, from
where). ``indexer.reorg``: the chain reorganised under the index; the rows above
``fork_block`` were rolled back and re-indexed; ``replaced`` lists the hashes of the
blocks that were dropped, so the evidence names exactly what the index had served.
"""

from __future__ import annotations

from typing import Any

from opsledger.core.schema_parts import count, digest, obj, string

__all__ = ["SCHEMAS"]

_block_hash: dict[str, Any] = {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "indexer.started": obj(
        {"config_digest": digest, "chains": {"type": "array", "items": string, "maxItems": 256}},
        {"database": string, "once": {"type": "boolean"}},
    ),
    "indexer.reorg": obj(
        {
            "chain": string,
            "depth": count,
            "fork_block": count,
            "replaced": {"type": "array", "items": _block_hash, "maxItems": 100000},
        },
        {"old_height": count, "new_head": count, "removed_rows": count},
    ),
}
