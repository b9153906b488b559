"""Every package says what is public with a complete, importable ``__all__``."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import opsledger

PACKAGES = sorted(
    name for _, name, is_pkg in pkgutil.walk_packages(opsledger.__path__, "opsledger.") if is_pkg
)


@pytest.mark.parametrize("name", PACKAGES)
def test_package_declares_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported)
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names missing {member}"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and getattr(value, "__module__", "").startswith(name)
        and not isinstance(value, type(opsledger))
    }
    assert public <= set(exported), (
        f"{name} exposes unlisted names {sorted(public - set(exported))}"
    )


def test_core_packages_are_listed() -> None:
    for expected in ("opsledger.core", "opsledger.store", "opsledger.ledger", "opsledger.client"):
        assert expected in PACKAGES
