"""YAML that remembers lines, so a pipeline error can name ``file:line: field: reason``.

PyYAML's safe loader drops node positions once it builds Python values; this loader keeps
the line of every mapping, of each of its keys and of every sequence item. Only the safe
tags are accepted (a ``SafeLoader``), so a pipeline file can never build objects.
"""

from __future__ import annotations

from typing import Any

import yaml

from opsledger.core import ConfigError

__all__ = ["MAX_NODES", "LineDict", "LineList", "line_of", "load_yaml", "scalar_text", "to_plain"]

MAX_BYTES = 1_000_000
"""A pipeline file larger than this is refused: it is a mistake, not a pipeline."""


class LineDict(dict[str, Any]):
    """A mapping with ``line`` (its own) and ``key_lines`` (each key's)."""

    line: int = 0
    key_lines: dict[str, int]


class LineList(list[Any]):
    """A sequence with ``line`` and ``item_lines``."""

    line: int = 0
    item_lines: list[int]


_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    """libyaml's parser when PyYAML was built with it (ten times faster), else PyYAML's;
    both keep node marks, and both construct only the safe tags."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a mapping key must be text", line=None
            )
        name = str(key)
        result[name] = loader.construct_object(value_node, deep=True)
        result.key_lines[name] = key_node.start_mark.line + 1
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def line_of(value: Any, key: str | int | None = None) -> int | None:
    """The line of ``value`` (a loaded mapping or list), or of its ``key``/item."""
    if isinstance(value, LineDict):
        if isinstance(key, str) and key in value.key_lines:
            return value.key_lines[key]
        return value.line
    if isinstance(value, LineList):
        if isinstance(key, int) and 0 <= key < len(value.item_lines):
            return value.item_lines[key]
        return value.line
    return None


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text``; any YAML problem becomes a ``ConfigError`` naming ``source:line``."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: the file is larger than {MAX_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}:{exc.message.removeprefix('line ')}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests too deeply") from None


def scalar_text(value: Any) -> str:
    """A YAML scalar as the text a pipeline means by it (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


MAX_NODES = 10_000
"""A mapping copied with ``to_plain`` may hold at most this many values. YAML aliases share
nodes, so a few lines can stand for billions of them; copying must stop early."""


def to_plain(value: Any, substitute: Any, budget: list[int] | None = None) -> Any:
    """Loader containers → plain dicts and lists, with ``substitute`` applied to text."""
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"more than {MAX_NODES} values (YAML aliases?)")
    if isinstance(value, dict):
        return {k: to_plain(v, substitute, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v, substitute, budget) for v in value]
    if isinstance(value, str):
        return substitute(value)
    return value
