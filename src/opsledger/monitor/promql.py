"""A PromQL subset, parsed and evaluated in-process over the monitor's own samples.

Alert rules are written in PromQL so the same file loads into a real Prometheus
(``opsledger monitor rules export`` → ``promtool check rules``), yet one monitor process
must be able to run them alone. No maintained Python library evaluates PromQL, so this
module does, by hand, for the part of the language alert rules use:

* literals (numbers, durations in ranges), instant and range selectors with ``=``,
  ``!=``, ``=~``, ``!~`` matchers;
* arithmetic ``+ - * / % ^``, comparisons ``== != > < >= <=`` (filtering, or ``bool``),
  ``and``, ``or``, ``unless``, with one-to-one vector matching (``on``/``ignoring``);
* aggregations ``sum min max avg count`` with ``by``/``without``;
* functions ``rate increase delta changes resets irate``, ``*_over_time``
  (``avg min max sum count last``), ``histogram_quantile``, ``abs``, ``absent``,
  ``clamp_min``, ``clamp_max``, ``time``, ``timestamp``, ``vector``, ``scalar``.

Anything else (``offset``, ``@``, subqueries, ``group_left``) is refused when a rule is
loaded, with the position, so a rule never silently means something else here than in
Prometheus. ``rate`` and friends extrapolate exactly as Prometheus does, so thresholds
mean the same in both places.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

from opsledger.core.errors import InvalidInput

__all__ = [
    "DEFAULT_LOOKBACK",
    "Labels",
    "PromQLError",
    "Sample",
    "SampleSource",
    "evaluate",
    "parse",
    "parse_duration",
]

DEFAULT_LOOKBACK = 300.0
"""How far back an instant selector looks for a sample (Prometheus's default: 5m)."""

Labels = tuple[tuple[str, str], ...]
"""Sorted (name, value) pairs; ``__name__`` included for selected series."""


class PromQLError(InvalidInput):
    """An expression this evaluator cannot parse or does not support."""


@dataclass(frozen=True)
class Sample:
    labels: Labels
    value: float
    time: float


class SampleSource(Protocol):
    """Where selectors read samples: the monitor's series store."""

    def window(
        self, name: str, start: float, end: float
    ) -> Iterable[tuple[Labels, Sequence[tuple[float, float]]]]:
        """Every series of metric ``name`` with its (time, value) points in
        ``[start, end]``, oldest first; series with no point there may be left out."""
        ...


# ---------------------------------------------------------------- lexing

_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def parse_duration(text: str) -> float:
    """A Prometheus duration (``5m``, ``1h30m``, ``250ms``) in seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise PromQLError(f"bad duration {text!r} (use e.g. 30s, 5m, 1h30m)")
    return float(
        sum(int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS, strict=False) if g)
    )


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>\[\s*[0-9]+[a-z0-9]*\s*(?::[^\]]*)?\])
  | (?P<number>0x[0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[Ii]nf|NaN)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){},])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PromQLError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append(_Token(kind, match.group(), pos))
        pos = match.end()
    out.append(_Token("eof", "", len(text)))
    return out


# ---------------------------------------------------------------- syntax tree


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[Matcher, ...]
    range: float | None = None


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    expr: Expr
    grouping: tuple[str, ...]
    without: bool


@dataclass(frozen=True)
class Binary:
    op: str
    left: Expr
    right: Expr
    bool_mode: bool = False
    on: tuple[str, ...] | None = None
    ignoring: tuple[str, ...] = ()


@dataclass(frozen=True)
class Negate:
    expr: Expr


Expr = Union[Number, Selector, Call, Aggregate, Binary, Negate]  # noqa: UP007 - recursive alias

_AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "count"})
_RANGE_FUNCTIONS = frozenset(
    {
        "rate",
        "irate",
        "increase",
        "delta",
        "changes",
        "resets",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
    }
)
_OTHER_FUNCTIONS = {
    "abs": 1,
    "absent": 1,
    "clamp_min": 2,
    "clamp_max": 2,
    "histogram_quantile": 2,
    "scalar": 1,
    "time": 0,
    "timestamp": 1,
    "vector": 1,
}
_COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
_PRECEDENCE = [
    frozenset({"or"}),
    frozenset({"and", "unless"}),
    _COMPARISONS,
    frozenset({"+", "-"}),
    frozenset({"*", "/", "%"}),
]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, message: str, token: _Token | None = None) -> PromQLError:
        where = (token or self.peek()).pos + 1
        return PromQLError(f"{message} at position {where} of {self.text!r}")

    def expect(self, text: str) -> _Token:
        token = self.take()
        if token.text != text:
            raise self.fail(f"expected {text!r}, found {token.text or 'end'!r}", token)
        return token

    def parse(self) -> Expr:
        expr = self.binary(0)
        if self.peek().kind != "eof":
            raise self.fail(f"unexpected {self.peek().text!r}")
        return expr

    def binary(self, level: int) -> Expr:
        if level == len(_PRECEDENCE):
            return self.power()
        left = self.binary(level + 1)
        while self.peek().text in _PRECEDENCE[level]:
            op = self.take().text
            bool_mode = False
            if self.peek().text == "bool":
                if op not in _COMPARISONS:
                    raise self.fail("'bool' only follows a comparison")
                self.take()
                bool_mode = True
            on, ignoring = self.matching()
            right = self.binary(level + 1)
            left = Binary(op, left, right, bool_mode, on, ignoring)
        return left

    def matching(self) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
        word = self.peek().text
        if word not in ("on", "ignoring"):
            return None, ()
        self.take()
        labels = self.label_list()
        if self.peek().text in ("group_left", "group_right"):
            raise self.fail("group_left/group_right are not supported")
        return (labels, ()) if word == "on" else (None, labels)

    def power(self) -> Expr:
        base = self.unary()
        if self.peek().text == "^":
            self.take()
            return Binary("^", base, self.power())  # right-associative
        return base

    def unary(self) -> Expr:
        if self.peek().text in ("-", "+"):
            sign = self.take().text
            inner = self.unary()
            return Negate(inner) if sign == "-" else inner
        return self.primary()

    def primary(self) -> Expr:
        token = self.peek()
        if token.kind == "number":
            self.take()
            value = float(int(token.text, 16)) if token.text.startswith("0x") else float(token.text)
            return Number(value)
        if token.text == "(":
            self.take()
            inner = self.binary(0)
            self.expect(")")
            return self.range_suffix(inner)
        if token.text == "{":
            return self.range_suffix(self.selector(""))
        if token.kind == "ident":
            self.take()
            name = token.text
            if name in _AGGREGATIONS:
                return self.aggregate(name)
            if self.peek().text == "(":
                return self.call(name, token)
            if name in ("by", "without", "on", "ignoring", "bool", "offset"):
                raise self.fail(f"unexpected keyword {name!r}", token)
            return self.range_suffix(self.selector(name))
        raise self.fail(f"unexpected {token.text or 'end'!r}", token)

    def range_suffix(self, expr: Expr) -> Expr:
        token = self.peek()
        if token.kind == "duration":
            self.take()
            inner = token.text[1:-1].strip()
            if ":" in inner:
                raise self.fail("subqueries are not supported", token)
            if not isinstance(expr, Selector) or expr.range is not None:
                raise self.fail("a range applies to a plain selector only", token)
            expr = Selector(expr.name, expr.matchers, parse_duration(inner))
        if self.peek().text in ("offset", "@"):
            raise self.fail(f"{self.peek().text!r} is not supported")
        return expr

    def selector(self, name: str) -> Selector:
        matchers: list[Matcher] = []
        if self.peek().text == "{":
            self.take()
            while self.peek().text != "}":
                label = self.take()
                if label.kind != "ident":
                    raise self.fail("expected a label name", label)
                op = self.take()
                if op.text not in ("=", "!=", "=~", "!~"):
                    raise self.fail("expected =, !=, =~ or !~", op)
                value = self.take()
                if value.kind != "string":
                    raise self.fail("expected a quoted label value", value)
                text = _unquote(value.text)
                if op.text in ("=~", "!~"):
                    try:
                        re.compile(text)
                    except re.error as exc:
                        raise self.fail(f"bad regular expression: {exc}", value) from None
                matchers.append(Matcher(label.text, op.text, text))
                if self.peek().text == ",":
                    self.take()
                elif self.peek().text != "}":
                    raise self.fail("expected ',' or '}'")
            self.take()
        if name:
            matchers.insert(0, Matcher("__name__", "=", name))
        if not any(m.name == "__name__" and m.op == "=" for m in matchers):
            raise self.fail("a selector needs a metric name")
        metric = next(m.value for m in matchers if m.name == "__name__" and m.op == "=")
        rest = tuple(m for m in matchers if not (m.name == "__name__" and m.op == "="))
        return Selector(metric, rest)

    def label_list(self) -> tuple[str, ...]:
        self.expect("(")
        labels: list[str] = []
        while self.peek().text != ")":
            token = self.take()
            if token.kind != "ident":
                raise self.fail("expected a label name", token)
            labels.append(token.text)
            if self.peek().text == ",":
                self.take()
        self.take()
        return tuple(labels)

    def aggregate(self, op: str) -> Aggregate:
        grouping: tuple[str, ...] = ()
        without = False
        if self.peek().text in ("by", "without"):
            without = self.take().text == "without"
            grouping = self.label_list()
        self.expect("(")
        inner = self.binary(0)
        self.expect(")")
        if self.peek().text in ("by", "without"):
            without = self.take().text == "without"
            grouping = self.label_list()
        return Aggregate(op, inner, grouping, without)

    def call(self, name: str, token: _Token) -> Expr:
        if name not in _RANGE_FUNCTIONS and name not in _OTHER_FUNCTIONS:
            raise self.fail(f"function {name!r} is not supported", token)
        self.expect("(")
        args: list[Expr] = []
        while self.peek().text != ")":
            args.append(self.binary(0))
            if self.peek().text == ",":
                self.take()
            elif self.peek().text != ")":
                raise self.fail("expected ',' or ')'")
        self.take()
        want = 1 if name in _RANGE_FUNCTIONS else _OTHER_FUNCTIONS[name]
        if len(args) != want:
            raise self.fail(f"{name}() takes {want} argument(s), got {len(args)}", token)
        if name in _RANGE_FUNCTIONS and not (isinstance(args[0], Selector) and args[0].range):
            raise self.fail(f"{name}() needs a range selector such as x[5m]", token)
        return Call(name, tuple(args))


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def parse(text: str) -> Expr:
    """Parse an expression; ``PromQLError`` names the position of what is wrong."""
    if not text.strip():
        raise PromQLError("empty expression")
    return _Parser(text).parse()


# ---------------------------------------------------------------- evaluation

Value = Union[float, list[Sample]]  # noqa: UP007


def _without_name(labels: Labels) -> Labels:
    return tuple(pair for pair in labels if pair[0] != "__name__")


def _select(
    source: SampleSource, sel: Selector, at: float, window: float
) -> list[tuple[Labels, list[tuple[float, float]]]]:
    picked: list[tuple[Labels, list[tuple[float, float]]]] = []
    # closed on the left, as in Prometheus 2.x (Debian's, which promtool tests run)
    for labels, points in source.window(sel.name, at - window, at):
        mapping = dict(labels)
        if all(m.matches(mapping) for m in sel.matchers):
            picked.append((labels, list(points)))
    return picked


def _extrapolated(
    points: list[tuple[float, float]], at: float, window: float, kind: str
) -> float | None:
    """Prometheus's ``extrapolatedRate``: the same numbers a Prometheus server gives."""
    if len(points) < 2:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result = last_v - first_v
    is_counter = kind in ("rate", "increase")
    if is_counter:
        previous = first_v
        for _, value in points[1:]:
            if value < previous:
                result += previous
            previous = value
    start, end = at - window, at
    to_start = first_t - start
    to_end = end - last_t
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    average_step = sampled / (len(points) - 1)
    if is_counter and result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    threshold = average_step * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average_step / 2
    interval += to_end if to_end < threshold else average_step / 2
    result *= interval / sampled
    if kind == "rate":
        result /= window
    return result


def _range_function(
    name: str, points: list[tuple[float, float]], at: float, window: float
) -> float | None:
    values = [v for _, v in points]
    if name in ("rate", "increase", "delta"):
        return _extrapolated(points, at, window, name)
    if name == "irate":
        if len(points) < 2:
            return None
        (t1, v1), (t2, v2) = points[-2], points[-1]
        change = v2 - v1 if v2 >= v1 else v2
        return change / (t2 - t1) if t2 > t1 else None
    if name == "changes":
        return float(sum(1 for a, b in itertools.pairwise(values) if a != b))
    if name == "resets":
        return float(sum(1 for a, b in itertools.pairwise(values) if b < a))
    reducers: dict[str, Callable[[list[float]], float]] = {
        "avg_over_time": lambda vs: sum(vs) / len(vs),
        "min_over_time": min,
        "max_over_time": max,
        "sum_over_time": sum,
        "count_over_time": lambda vs: float(len(vs)),
        "last_over_time": lambda vs: vs[-1],
    }
    return reducers[name](values)


def _histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's ``bucketQuantile`` over (upper bound, cumulative count) pairs."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        return math.nan
    counts = [c for _, c in buckets]
    for i in range(1, len(counts)):  # counts must not decrease (scrapes can race)
        counts[i] = max(counts[i], counts[i - 1])
    if len(buckets) < 2 or counts[-1] == 0:
        return math.nan
    rank = q * counts[-1]
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start = 0.0 if b == 0 else buckets[b - 1][0]
    end = buckets[b][0]
    count = counts[b]
    if b > 0:
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count) if count else start


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
    "%": lambda a, b: math.fmod(a, b) if b else math.nan,
    "^": lambda a, b: a**b,
}
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


class _Evaluator:
    def __init__(self, source: SampleSource, at: float, lookback: float) -> None:
        self.source = source
        self.at = at
        self.lookback = lookback

    def eval(self, expr: Expr) -> Value:
        if isinstance(expr, Number):
            return expr.value
        if isinstance(expr, Selector):
            if expr.range is not None:
                raise PromQLError("a range vector cannot be the result of an expression")
            return [
                Sample(labels, points[-1][1], self.at)
                for labels, points in _select(self.source, expr, self.at, self.lookback)
            ]
        if isinstance(expr, Negate):
            inner = self.eval(expr.expr)
            if isinstance(inner, float):
                return -inner
            return [Sample(_without_name(s.labels), -s.value, s.time) for s in inner]
        if isinstance(expr, Aggregate):
            return self.aggregate(expr)
        if isinstance(expr, Call):
            return self.call(expr)
        return self.binary(expr)

    def vector(self, expr: Expr, what: str) -> list[Sample]:
        value = self.eval(expr)
        if isinstance(value, float):
            raise PromQLError(f"{what} needs an instant vector, not a number")
        return value

    def scalar(self, expr: Expr, what: str) -> float:
        value = self.eval(expr)
        if not isinstance(value, float):
            raise PromQLError(f"{what} needs a number, not a vector")
        return value

    def aggregate(self, expr: Aggregate) -> list[Sample]:
        groups: dict[Labels, list[float]] = {}
        for sample in self.vector(expr.expr, expr.op):
            if expr.without:
                drop = set(expr.grouping) | {"__name__"}
                key = tuple(p for p in sample.labels if p[0] not in drop)
            else:
                keep = set(expr.grouping)
                key = tuple(p for p in sample.labels if p[0] in keep)
            groups.setdefault(key, []).append(sample.value)
        reduce: dict[str, Callable[[list[float]], float]] = {
            "sum": sum,
            "min": min,
            "max": max,
            "avg": lambda vs: sum(vs) / len(vs),
            "count": lambda vs: float(len(vs)),
        }
        return [Sample(key, reduce[expr.op](vs), self.at) for key, vs in sorted(groups.items())]

    def call(self, expr: Call) -> Value:
        name = expr.func
        if name in _RANGE_FUNCTIONS:
            sel = expr.args[0]
            assert isinstance(sel, Selector)
            assert sel.range is not None
            out: list[Sample] = []
            for labels, points in _select(self.source, sel, self.at, sel.range):
                value = _range_function(name, points, self.at, sel.range)
                if value is not None:
                    kept = labels if name == "last_over_time" else _without_name(labels)
                    out.append(Sample(kept, value, self.at))
            return out
        if name == "time":
            return self.at
        if name == "vector":
            return [Sample((), self.scalar(expr.args[0], "vector()"), self.at)]
        if name == "scalar":
            samples = self.vector(expr.args[0], "scalar()")
            return samples[0].value if len(samples) == 1 else math.nan
        if name == "absent":
            samples = self.vector(expr.args[0], "absent()")
            if samples:
                return []
            absent_labels: Labels = ()
            inner = expr.args[0]
            if isinstance(inner, Selector):
                absent_labels = tuple(
                    sorted((m.name, m.value) for m in inner.matchers if m.op == "=")
                )
            return [Sample(absent_labels, 1.0, self.at)]
        if name == "histogram_quantile":
            q = self.scalar(expr.args[0], "histogram_quantile()")
            by_series: dict[Labels, list[tuple[float, float]]] = {}
            for sample in self.vector(expr.args[1], "histogram_quantile()"):
                mapping = dict(sample.labels)
                if "le" not in mapping:
                    continue
                key = tuple(p for p in _without_name(sample.labels) if p[0] != "le")
                by_series.setdefault(key, []).append((float(mapping["le"]), sample.value))
            return [
                Sample(key, _histogram_quantile(q, buckets), self.at)
                for key, buckets in sorted(by_series.items())
            ]
        samples = self.vector(expr.args[0], f"{name}()")
        if name == "abs":
            return [Sample(_without_name(s.labels), abs(s.value), s.time) for s in samples]
        if name == "timestamp":
            return [Sample(_without_name(s.labels), s.time, s.time) for s in samples]
        bound = self.scalar(expr.args[1], f"{name}()")
        pick = max if name == "clamp_min" else min
        return [Sample(_without_name(s.labels), pick(s.value, bound), s.time) for s in samples]

    def binary(self, expr: Binary) -> Value:
        left = self.eval(expr.left)
        right = self.eval(expr.right)
        op = expr.op
        if op in ("and", "or", "unless"):
            if isinstance(left, float) or isinstance(right, float):
                raise PromQLError(f"{op!r} needs vectors on both sides")
            return self.set_operation(op, left, right, expr)
        if isinstance(left, float) and isinstance(right, float):
            if op in _COMPARE:
                if not expr.bool_mode:
                    raise PromQLError("comparisons between two numbers need 'bool'")
                return float(_COMPARE[op](left, right))
            return _ARITHMETIC[op](left, right)
        if isinstance(left, float) or isinstance(right, float):
            vector = right if isinstance(left, float) else left
            assert isinstance(vector, list)
            out: list[Sample] = []
            for sample in vector:
                a, b = (left, sample.value) if isinstance(left, float) else (sample.value, right)
                assert isinstance(a, float)
                assert isinstance(b, float)
                out.extend(self.combine(op, expr.bool_mode, sample, a, b))
            return out
        return self.match_vectors(expr, left, right)

    @staticmethod
    def combine(op: str, bool_mode: bool, sample: Sample, a: float, b: float) -> list[Sample]:
        if op in _COMPARE:
            hit = _COMPARE[op](a, b)
            if bool_mode:
                return [Sample(_without_name(sample.labels), float(hit), sample.time)]
            return [Sample(sample.labels, sample.value, sample.time)] if hit else []
        return [Sample(_without_name(sample.labels), _ARITHMETIC[op](a, b), sample.time)]

    @staticmethod
    def match_key(labels: Labels, expr: Binary) -> Labels:
        if expr.on is not None:
            keep = set(expr.on)
            return tuple(p for p in labels if p[0] in keep)
        drop = set(expr.ignoring) | {"__name__"}
        return tuple(p for p in labels if p[0] not in drop)

    def match_vectors(self, expr: Binary, left: list[Sample], right: list[Sample]) -> list[Sample]:
        by_key: dict[Labels, Sample] = {}
        for sample in right:
            key = self.match_key(sample.labels, expr)
            if key in by_key:
                raise PromQLError("many-to-one matching is not supported: add on(...)")
            by_key[key] = sample
        out: list[Sample] = []
        for sample in left:
            other = by_key.get(self.match_key(sample.labels, expr))
            if other is not None:
                out.extend(self.combine(expr.op, expr.bool_mode, sample, sample.value, other.value))
        return out

    def set_operation(
        self, op: str, left: list[Sample], right: list[Sample], expr: Binary
    ) -> list[Sample]:
        right_keys = {self.match_key(s.labels, expr) for s in right}
        if op == "and":
            return [s for s in left if self.match_key(s.labels, expr) in right_keys]
        if op == "unless":
            return [s for s in left if self.match_key(s.labels, expr) not in right_keys]
        left_keys = {self.match_key(s.labels, expr) for s in left}
        return left + [s for s in right if self.match_key(s.labels, expr) not in left_keys]


def evaluate(
    expr: Expr | str, source: SampleSource, at: float, *, lookback: float = DEFAULT_LOOKBACK
) -> Value:
    """Evaluate at time ``at`` (seconds): a number or an instant vector."""
    tree = parse(expr) if isinstance(expr, str) else expr
    return _Evaluator(source, at, lookback).eval(tree)
