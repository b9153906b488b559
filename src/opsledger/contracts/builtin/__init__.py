"""The built-in contracts shipped with opsledger; ``init`` deploys them with defaults."""

from __future__ import annotations

from importlib import resources

__all__ = ["BUILTIN", "builtin_source", "builtin_sources"]

BUILTIN = ("release-gate", "sla")


def builtin_source(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.yaml").read_text()


def builtin_sources() -> dict[str, str]:
    return {name: builtin_source(name) for name in BUILTIN}
