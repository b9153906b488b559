from __future__ import annotations

import pytest

from inventory.store import Stock


def test_add_accumulates() -> None:
    stock = Stock()
    stock.add("apple", 2)
    assert stock.add("apple", 3) == 5


def test_take_reduces() -> None:
    stock = Stock()
    stock.add("pear", 4)
    assert stock.take("pear", 1) == 3


def test_cannot_take_more_than_held() -> None:
    stock = Stock()
    with pytest.raises(ValueError, match="only 0"):
        stock.take("plum", 1)
