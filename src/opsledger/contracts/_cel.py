"""The one module that touches the CEL library (cel-expr-python, Google's cel-cpp).

Chosen in docs/adr/0005-cel-library.md: it type-checks expressions when a contract is
deployed (unknown functions and variables, wrong types, with line and column), bounds
evaluation deterministically (a fixed budget of comprehension iterations, never a clock),
and follows the spec's error rules. Activations are built from ``canonical`` JSON so every
node hands the library the same values in the same key order.

Variables every expression sees:

``trigger``  the transaction that triggered the contract (an evidence item, see engine)
``request``  the transaction the verdict is about (the trigger unless the contract names
             a ``request`` type)
``evidence`` a map from evidence-set name to the list of items found
``params``   the contract's parameters
``derived``  values the contract derives, in order
``now``      block time of the trigger's block (RFC 3339 string; use ``timestamp(now)``)
``e``        the candidate item, only inside an evidence set's ``where`` filter (compiled
             as ``candidates.filter(e, <where>)``: one evaluation per set, not per item)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cel_expr_python import cel

from opsledger.core import InvalidInput

__all__ = ["CelError", "Compiled", "activation", "compile_expression"]

_T = cel.Type
_ITEM = _T.Map(_T.STRING, _T.DYN)
_VARIABLES = {
    "trigger": _ITEM,
    "request": _ITEM,
    "evidence": _T.Map(_T.STRING, _T.List(_ITEM)),
    "params": _T.Map(_T.STRING, _T.DYN),
    "derived": _T.Map(_T.STRING, _T.DYN),
    "now": _T.STRING,
    "e": _ITEM,
    "candidates": _T.List(_ITEM),
}
_ENV = cel.NewEnv(variables=_VARIABLES)
MAX_SOURCE = 4096


class CelError(InvalidInput):
    """A CEL expression that does not compile, or evaluates to an error or wrong type."""

    code = "contract_error"


class Compiled:
    """A compiled expression with what it must return (``bool``, ``string``, ``list`` or
    ``any``)."""

    def __init__(self, source: str, expected: str, expression: Any) -> None:
        self.source = source
        self.expected = expected
        self._expression = expression

    def evaluate(self, activation: Any) -> Any:
        """The plain Python value, or ``CelError`` for an error value or a wrong type."""
        try:
            value = self._expression.eval(activation)
        except RuntimeError as exc:  # e.g. "INTERNAL: Iteration budget exceeded"
            raise CelError(f"{self.source!r}: {_first_line(str(exc))}") from None
        if value.type() == _T.ERROR:
            raise CelError(f"{self.source!r}: {_first_line(str(value))}")
        result = value.plain_value()
        if self.expected == "bool" and not isinstance(result, bool):
            raise CelError(f"{self.source!r} must be true or false, got {type(result).__name__}")
        if self.expected == "string" and not isinstance(result, str):
            raise CelError(f"{self.source!r} must be a string, got {type(result).__name__}")
        if self.expected == "list" and not isinstance(result, list):
            raise CelError(f"{self.source!r} must be a list, got {type(result).__name__}")
        return _plain(result)


def _plain(value: Any) -> Any:
    """Library values (timestamps, durations) as JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "evaluation failed"


def compile_expression(source: str, expected: str, *, where: str, line: int | None) -> Compiled:
    """Compile or raise ``CelError`` naming the contract line, the column and the reason."""
    if len(source) > MAX_SOURCE:
        raise CelError(f"{where}: expression longer than {MAX_SOURCE} characters", line=line)
    try:
        expression = _ENV.compile(source)
    except RuntimeError as exc:
        raise CelError(f"{where}: {_describe(str(exc), line)}", line=line) from None
    returned = expression.return_type()
    wanted = {"bool": _T.BOOL, "string": _T.STRING}.get(expected)
    if wanted is not None and returned not in (wanted, _T.DYN):
        raise CelError(
            f"{where}: must be a {expected} expression, this one gives {returned}", line=line
        )
    return Compiled(source, expected, expression)


def _describe(message: str, line: int | None) -> str:
    """``INVALID_ARGUMENT: ERROR: <input>:1:18: Syntax error: ...`` → ``column 18: ...``."""
    text = message.split("ERROR: ", 1)[-1].splitlines()[0]
    if text.startswith("<input>:"):
        _, _, rest = text.partition(":")
        _, _, rest = rest.partition(":")  # the line within the expression
        column, _, reason = rest.partition(":")
        where = f"line {line}, column {column}" if line is not None else f"column {column}"
        return f"{where}: {reason.strip()}"
    return text


def activation(values: Mapping[str, Any]) -> Any:
    """A library activation from JSON values.

    Every value is already built the same way on every node, so no canonical round trip
    is needed (it cost two thirds of a verdict, measured by bench/contracts.py): evidence
    items come from canonical leaves (sorted keys) through ``evidence_item`` (fixed key
    order), params from the deployed YAML source (document order), derived values from
    CEL itself, and no value can hold an integer beyond 2**53 (admission refuses them).
    """
    return _ENV.Activation(dict(values))
