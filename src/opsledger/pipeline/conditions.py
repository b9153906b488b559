"""The ``if:`` of a pipeline job: a tiny, safe expression language.

Written by hand on purpose: the project's CEL lives in ``opsledger.contracts``, which the
pipeline service may not import, and a condition needs only comparisons of known values.
Nothing here can call code, read files or loop. Grammar::

    expr    := or
    or      := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!" unary | primary
    primary := "(" expr ")" | call | operand (("==" | "!=") operand)?
    call    := "success()" | "failure()" | "always()" | "cancelled()"
    operand := 'text' | "text" | true | false | vars.NAME | matrix.NAME | env.NAME

``success()`` is true when every job this one needs succeeded, ``failure()`` when at least
one failed (or timed out), ``always()`` is always true, ``cancelled()`` when the run is
being cancelled. A condition without a status call gets an implicit ``success() &&`` in
front, as in GitHub Actions. Values may also be written ``${{ vars.NAME }}`` (the form the
rest of the file uses); unknown names are refused when the file is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from opsledger.core import ConfigError

__all__ = ["Condition", "ConditionContext", "parse_condition"]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'[^']*'|"[^"]*")
    | (?P<op>==|!=|&&|\|\||!|\(|\))
    | (?P<call>(?:success|failure|always|cancelled)\(\))
    | (?P<name>(?:vars|matrix|env)\.[A-Za-z_][A-Za-z0-9_-]*|true|false)
    )""",
    re.VERBOSE,
)
_WRAPPED = re.compile(r"^\s*\$\{\{(.*)\}\}\s*$", re.DOTALL)
_INLINE = re.compile(r"\$\{\{\s*((?:vars|matrix|env)\.[A-Za-z_][A-Za-z0-9_-]*)\s*\}\}")

Status = Literal["success", "failure", "always", "cancelled"]


@dataclass(frozen=True)
class ConditionContext:
    """What a condition may read when its job is about to be scheduled."""

    needs_ok: bool
    needs_failed: bool
    cancelled: bool
    values: Mapping[str, str]  # "vars.x", "matrix.y", "env.Z"


@dataclass(frozen=True)
class _Node:
    kind: str  # or | and | not | eq | ne | call | lit | ref
    args: tuple[_Node, ...] = ()
    value: str = ""


@dataclass(frozen=True)
class Condition:
    """A parsed condition; ``text`` is what the file said (recorded in run state)."""

    text: str
    root: _Node
    has_status_call: bool

    def evaluate(self, ctx: ConditionContext) -> bool:
        result = _truthy(_eval(self.root, ctx))
        if not self.has_status_call:
            return ctx.needs_ok and not ctx.cancelled and result
        return result


def _truthy(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    return value not in ("", "false", "0")


def _eval(node: _Node, ctx: ConditionContext) -> str | bool:
    if node.kind == "or":
        return any(_truthy(_eval(a, ctx)) for a in node.args)
    if node.kind == "and":
        return all(_truthy(_eval(a, ctx)) for a in node.args)
    if node.kind == "not":
        return not _truthy(_eval(node.args[0], ctx))
    if node.kind in ("eq", "ne"):
        left, right = (_eval(a, ctx) for a in node.args)
        same = _as_text(left) == _as_text(right)
        return same if node.kind == "eq" else not same
    if node.kind == "call":
        return {
            "success()": ctx.needs_ok and not ctx.cancelled,
            "failure()": ctx.needs_failed,
            "always()": True,
            "cancelled()": ctx.cancelled,
        }[node.value]
    if node.kind == "ref":
        return ctx.values.get(node.value, "")
    return node.value if node.value not in ("true", "false") else node.value == "true"


def _as_text(value: str | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else value


class _Parser:
    def __init__(self, text: str, where: str) -> None:
        self.where = where
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            match = _TOKEN.match(stripped, pos)
            if match is None or match.end() == pos:
                raise ConfigError(f"{where}: cannot read the condition at {stripped[pos:]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ConfigError(f"{self.where}: the condition ends too early")
        self.pos += 1
        return token

    def parse(self) -> _Node:
        node = self.or_()
        if self.peek() is not None:
            raise ConfigError(f"{self.where}: unexpected {self.peek()[1]!r} in the condition")  # type: ignore[index]
        return node

    def or_(self) -> _Node:
        args = [self.and_()]
        while self.peek() == ("op", "||"):
            self.take()
            args.append(self.and_())
        return args[0] if len(args) == 1 else _Node("or", tuple(args))

    def and_(self) -> _Node:
        args = [self.unary()]
        while self.peek() == ("op", "&&"):
            self.take()
            args.append(self.unary())
        return args[0] if len(args) == 1 else _Node("and", tuple(args))

    def unary(self) -> _Node:
        if self.peek() == ("op", "!"):
            self.take()
            return _Node("not", (self.unary(),))
        return self.primary()

    def primary(self) -> _Node:
        kind, value = self.take()
        if (kind, value) == ("op", "("):
            node = self.or_()
            if self.take() != ("op", ")"):
                raise ConfigError(f"{self.where}: a ')' is missing in the condition")
            return node
        if kind == "call":
            return _Node("call", value=value)
        left = self.operand(kind, value)
        if self.peek() in (("op", "=="), ("op", "!=")):
            op = self.take()[1]
            right = self.operand(*self.take())
            return _Node("eq" if op == "==" else "ne", (left, right))
        return left

    def operand(self, kind: str, value: str) -> _Node:
        if kind == "str":
            return _Node("lit", value=value[1:-1])
        if kind == "name":
            if value in ("true", "false"):
                return _Node("lit", value=value)
            return _Node("ref", value=value)
        raise ConfigError(f"{self.where}: expected a value, found {value!r} in the condition")


def parse_condition(text: str, where: str, known: frozenset[str] | None = None) -> Condition:
    """Parse ``text``; ``known`` (``vars.x``, ``matrix.y``...) limits the names it may use
    (``env.*`` is always allowed). Errors are ``ConfigError`` prefixed with ``where``."""
    wrapped = _WRAPPED.match(text)
    body = wrapped.group(1) if wrapped else _INLINE.sub(r"\1", text)
    if not body.strip():
        raise ConfigError(f"{where}: the condition is empty")
    parser = _Parser(body, where)
    root = parser.parse()
    refs = [v for k, v in parser.tokens if k == "name" and v not in ("true", "false")]
    for ref in refs:
        if known is not None and not ref.startswith("env.") and ref not in known:
            raise ConfigError(f"{where}: unknown name {ref} in the condition")
    has_call = any(k == "call" for k, _ in parser.tokens)
    return Condition(text=text, root=root, has_status_call=has_call)
