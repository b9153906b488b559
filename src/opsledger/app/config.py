"""``opsledger.yaml``: one file, a section per service, validated with clear errors.

This module validates the ``ledger`` and ``api`` sections; the other services validate
their own (``notify``, ``contracts``, ``access``, ``webhooks``: see docs/configuration.md).
Unknown keys are refused everywhere (a typo must not silently fall back to a default).
Environment variables override the file:
``OPSLEDGER_STORE`` (store URL) and ``OPSLEDGER_LISTEN`` (API address).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsledger.core import ConfigError

__all__ = ["Config", "load_config", "load_section", "write_config"]

_LEDGER_KEYS = {"store", "node", "admin", "block_max_txs", "block_max_wait_ms"}
_API_KEYS = {"listen"}


@dataclass(frozen=True, slots=True)
class Config:
    store: str | None = None  # None: ledger.db inside the home (see Home.config)
    node: str = "node"
    admin: str = "admin"
    block_max_txs: int = 2000
    block_max_wait_ms: float = 0.0
    listen: str = "127.0.0.1:8700"

    def to_yaml(self) -> dict[str, Any]:
        ledger: dict[str, Any] = {"store": self.store} if self.store else {}
        return {
            "ledger": {
                **ledger,
                "node": self.node,
                "admin": self.admin,
                "block_max_txs": self.block_max_txs,
                "block_max_wait_ms": self.block_max_wait_ms,
            },
            "api": {"listen": self.listen},
        }


def _section(data: dict[str, Any], name: str, allowed: set[str], path: Path) -> dict[str, Any]:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {name} must be a mapping", key=name)
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {name}.{unknown[0]}", key=f"{name}.{unknown[0]}")
    return section


def load_config(path: Path) -> Config:
    """Read ``path`` (missing: all defaults). A relative SQLite path stays relative here;
    ``Home.config`` resolves it against the home, so a copied home opens its own copy."""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    ledger = _section(data, "ledger", _LEDGER_KEYS, path)
    api = _section(data, "api", _API_KEYS, path)
    try:
        config = Config(
            store=os.environ.get("OPSLEDGER_STORE") or ledger.get("store") or None,
            node=str(ledger.get("node", "node")),
            admin=str(ledger.get("admin", "admin")),
            block_max_txs=int(ledger.get("block_max_txs", 2000)),
            block_max_wait_ms=float(ledger.get("block_max_wait_ms", 0.0)),
            listen=str(os.environ.get("OPSLEDGER_LISTEN") or api.get("listen", "127.0.0.1:8700")),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if config.block_max_txs < 1 or config.block_max_wait_ms < 0:
        raise ConfigError(f"{path}: ledger.block_max_txs must be >= 1 and wait >= 0")
    return config


def write_config(path: Path, config: Config) -> None:
    path.write_text(yaml.safe_dump(config.to_yaml(), sort_keys=False))


def load_section(path: Path, name: str) -> dict[str, Any]:
    """The raw mapping of one top-level section of ``opsledger.yaml`` (empty if absent).

    Each service validates its own section with clear errors naming ``name.key``; this
    only reads the file and checks that the section is a mapping.
    """
    if not path.exists():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    section = loaded.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {name} must be a mapping", key=name)
    return section
