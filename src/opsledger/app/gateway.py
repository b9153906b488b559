"""Composition of the gateway: its config (``--config`` or the home's ``gateway``
section) and its recorder (the home's node actor, or nothing without a home)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from opsledger.app.config import load_section
from opsledger.app.home import Home
from opsledger.client.base import NullRecorder, Recorder
from opsledger.core import ConfigError
from opsledger.gateway.config import GatewayConfig, parse_config

__all__ = ["gateway_recorder", "load_gateway_config"]


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file", key="--config")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    # The file may hold the section itself or a document with a ``gateway`` section.
    if "gateway" in loaded and "chains" not in loaded:
        section = loaded["gateway"] or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: gateway must be a mapping", key="gateway")
        return dict(section)
    return dict(loaded)


def _key_line(path: Path, key: str) -> int | None:
    """The line of ``key`` (``gateway.chains[0].upstreams[1].url``) in the YAML file."""
    try:
        node: Any = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line: int | None = None
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    section_only = isinstance(node, yaml.MappingNode) and not any(
        k.value == "gateway" for k, _ in node.value
    )
    if section_only and parts[:1] == ["gateway"]:
        parts = parts[1:]  # the file holds the section itself
    for part in parts:
        if isinstance(node, yaml.SequenceNode) and part.startswith("["):
            index = int(part[1:-1])
            if index >= len(node.value):
                break
            node = node.value[index]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == part), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        else:
            break
    return line


def _parse(data: dict[str, Any], path: Path) -> GatewayConfig:
    try:
        return parse_config(data, str(path))
    except ConfigError as exc:
        key = exc.details.get("key")
        line = _key_line(path, key) if isinstance(key, str) else None
        if line is None:
            raise
        message = exc.message.replace(f"{path}: ", f"{path}:{line}: ", 1)
        raise ConfigError(message, key=key, line=line) from None


def load_gateway_config(config: Path | None, home: Home | None) -> GatewayConfig:
    """``config`` when given, else the ``gateway`` section of the home's opsledger.yaml.

    Errors name the file, the line, the key path and the reason."""
    if config is not None:
        return _parse(_read_file(config), config)
    if home is None or not home.config_path.exists():
        raise ConfigError(
            "no gateway config: pass --config FILE or add a gateway section to opsledger.yaml"
        )
    section = load_section(home.config_path, "gateway")
    if not section:
        raise ConfigError(f"{home.config_path}: no gateway section", key="gateway")
    return _parse(section, home.config_path)


def gateway_recorder(home: Home | None) -> Recorder:
    """Records as the home's node actor; ``NullRecorder`` when no home was given."""
    if home is None:
        return NullRecorder()
    return home.recorder(home.config().node)
