"""PEP 562 lazy exports for a package ``__init__`` (``opsledger.core``, ``opsledger.app``).

A package that re-exports names from its modules makes every importer pay for all of
them; with this, ``from package import X`` imports only X's module, on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each name to the
    submodule (relative to ``package``) that defines it; ``namespace`` is the package's
    ``globals()``, where a loaded name is cached so later lookups skip the function."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return getattr_, dir_
