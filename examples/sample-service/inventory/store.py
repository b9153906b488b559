"""An in-memory stock table."""

from __future__ import annotations


class Stock:
    def __init__(self) -> None:
        self._items: dict[str, int] = {}

    def add(self, sku: str, count: int) -> int:
        if count <= 0:
            raise ValueError("count must be positive")
        self._items[sku] = self._items.get(sku, 0) + count
        return self._items[sku]

    def take(self, sku: str, count: int) -> int:
        have = self._items.get(sku, 0)
        if count > have:
            raise ValueError(f"only {have} of {sku} in stock")
        self._items[sku] = have - count
        return self._items[sku]

    def level(self, sku: str) -> int:
        return self._items.get(sku, 0)
