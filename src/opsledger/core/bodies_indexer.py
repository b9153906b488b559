"""Bodies of the transactions the indexer writes."""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS"]

SCHEMAS: dict[str, dict[str, Any]] = {}
