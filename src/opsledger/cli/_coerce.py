"""Typer's parameter coercion, with pydantic loaded only when a value needs it.

Why: Typer (0.2x) converts command-line values through a pydantic ``TypeAdapter`` that
each parameter builds the first time it is processed, even when its value is None, so
every ``opsledger`` command paid for importing pydantic and its plugin loader (~70 ms,
measured with ``-X importtime`` on ``opsledger index --once``, a quarter of its
start-up) just to turn ``--home`` and ``--config`` strings into ``Path`` objects.

Each parameter gets a runtime parameter that:

* returns a ``str`` value of a ``str`` parameter as it is (what typer's adapter does);
* turns a ``str`` value of a ``Path`` parameter into ``Path(value)`` (what pydantic's
  ``Path`` validator returns; a ``Path`` value stays itself), then lets typer's own
  ``coerce_cli_path`` apply the path options (``exists``, ``dir_okay``, ``resolve_path``
  ...) with its own messages;
* returns an ``int`` or ``float`` value of a parameter of that type (a default, say)
  as it is when it lies within the option's ``min``/``max``: what validation returns;
* hands every other value to the runtime parameter typer itself would have built, built
  the first time one comes. ``None`` and a flag's ``bool`` never reach it (typer returns
  them before converting).

So results and error messages stay typer's; only when pydantic loads changes.

This leans on typer internals (``_TyperParameter._runtime_param``, ``RuntimeParam``,
``build_runtime_param``, ``coerce_cli_path``). If they move, ``install`` does nothing and
typer behaves as it always did, only slower; ``tests/cli/test_startup_coercion.py`` then
fails, so it is noticed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["install"]

try:
    from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
    from typer._param_types import coerce_cli_path, routes_to_path
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover - another typer: keep its own coercion
    _SUPPORTED = False
else:
    _SUPPORTED = True

    @dataclass(frozen=True)
    class _LazyParam(RuntimeParam):
        """The values above as typer's adapters would make them; anything else goes to
        typer's own runtime parameter, built when first needed."""

        descriptor: TypeDescriptor
        kind: type[Any] | None  # str, Path, int, float, or None: always typer's own
        _own: list[RuntimeParam] = field(default_factory=list, compare=False, repr=False)

        def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Any) -> Any:
            if self.kind is str and type(value) is str:
                return value
            if self.kind is Path and isinstance(value, str | Path):
                path = Path(value) if isinstance(value, str) else value
                return coerce_cli_path(
                    path, self.parameter_info, path_type=Path, param=param, ctx=ctx
                )
            if self.kind in (int, float) and type(value) is self.kind and self._in_bounds(value):
                return value  # an int or float default: already what validation returns
            if not self._own:
                self._own.append(build_runtime_param(self.descriptor))
            return self._own[0]._coerce_value(value, param=param, ctx=ctx)

        def _in_bounds(self, value: float) -> bool:
            """Within the option's ``min``/``max`` (so neither an error nor a clamp);
            False for NaN, so typer's own validation decides about it."""
            low, high = self.parameter_info.min, self.parameter_info.max
            if math.isnan(value):
                return False
            return (low is None or value >= low) and (high is None or value <= high)

    def _lazy(descriptor: TypeDescriptor) -> _LazyParam:
        """The runtime parameter for ``descriptor``. The fast kinds mirror the order of
        typer's ``build_leaf_adapter``: a custom parser or a file type wins over
        everything; ``str``, ``int`` and ``float`` are matched before the path rule; a
        ``Path`` annotation (exactly ``pathlib.Path``, no ``path_type`` override) is a
        path."""
        info = descriptor.parameter_info
        annotation = descriptor.annotation
        kind: type[Any] | None = None
        if descriptor.file_annotation is None and info.parser is None:
            if annotation in (str, int, float):
                kind = annotation
            elif annotation is Path and info.path_type is None:
                kind = Path if routes_to_path(annotation, info) else None
        return _LazyParam(info, annotation, descriptor, kind)


def install(command: Any, *, subcommands: bool = True) -> None:
    """Give the parameters of ``command`` (a click command built by typer), including
    the ``--help`` option it creates on first use, and unless told not to those of its
    subcommands, the lazy coercion above. Safe to call twice; a no-op if typer's
    internals are not the expected ones. ``subcommands=False`` is for a group whose
    ``commands`` would load every command module (the root)."""
    if not _SUPPORTED:
        return
    pending = [command]
    while pending:
        current = pending.pop()
        for param in getattr(current, "params", ()):
            _seed(param)
        _seed_help_option(current)
        children = getattr(current, "commands", None) if subcommands else None
        if isinstance(children, dict):
            pending.extend(children.values())


def _seed(param: Any) -> None:
    if not isinstance(param, _TyperParameter):
        return
    if getattr(param, "_runtime_param", "missing") is not None:
        return  # built already, or not the attribute we know
    param._runtime_param = _lazy(param.type_descriptor)


def _seed_help_option(command: Any) -> None:
    """Click creates a command's ``--help`` option when a context first asks for it
    (its names depend on the context); seed it as it is created. The wrapper is an
    instance attribute, so only this command object is affected."""
    if getattr(command, "_help_option", "missing") is not None:
        _seed(getattr(command, "_help_option", None))  # created already (or unknown)
        return
    if "get_help_option" in getattr(command, "__dict__", {"get_help_option": None}):
        return  # wrapped already
    create = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = create(ctx)
        if option is not None:
            _seed(option)
        return option

    command.get_help_option = get_help_option
