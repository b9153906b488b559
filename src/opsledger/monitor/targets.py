"""Targets managed at runtime: the API adds and removes them, the ledger remembers.

The config file stays the base ("monitors are code"); changes made through
``/api/v1/targets`` are recorded as ``monitor.config_changed`` (who, what, which
vantage) and replayed on top of the file when that vantage starts again, so they
persist without the monitor writing to its own config file, and the history of every
change is on the ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from opsledger.core.errors import ConfigError
from opsledger.monitor.config import MonitorConfig, Target, parse_target

__all__ = ["apply_target_changes", "target_from_spec", "target_spec"]

log = structlog.get_logger(__name__)


def target_spec(target: Target) -> dict[str, Any]:
    """The target as config would write it (defaults left out where they are None)."""
    return {k: v for k, v in dataclasses.asdict(target).items() if v is not None}


def target_from_spec(raw: Any, config: MonitorConfig, where: str = "target") -> Target:
    """Validate a target given to the API exactly as a config entry is validated.

    ``command`` probes run a shell command on the monitor's host, so they come only from
    the config file, which an operator controls: never from the API or a ledger record
    (anyone who can reach the API or sign as the node could otherwise run code here)."""
    if isinstance(raw, Mapping) and raw.get("kind") == "command":
        raise ConfigError(f"{where}.kind: command probes can only be configured in the file")
    return parse_target(raw, where, {"interval": config.interval, "timeout": 5.0})


def apply_target_changes(config: MonitorConfig, rows: Iterable[Mapping[str, Any]]) -> MonitorConfig:
    """``config`` with this vantage's recorded ``monitor.config_changed`` applied in
    order (rows oldest first). A recorded target that no longer validates is skipped."""
    targets = {t.name: t for t in config.targets}
    for row in rows:
        body = row["transaction"]["body"]
        if body.get("vantage") != config.vantage:
            continue
        if body.get("action") == "target_removed":
            targets.pop(str(body.get("target")), None)
        elif body.get("action") == "target_added" and isinstance(body.get("spec"), Mapping):
            try:
                target = target_from_spec(body["spec"], config)
            except (ConfigError, TypeError, ValueError) as exc:
                # an old record must not stop the monitor from starting
                log.warning("monitor.recorded_target_invalid", error=str(exc))
                continue
            targets[target.name] = target
    return dataclasses.replace(config, targets=tuple(targets.values()))
