"""Compare Python CEL libraries for the contract engine (ADR 0005).

Not part of the project's dependencies and never imported by tests. Run it from a throwaway
virtualenv that has the libraries::

    python3 -m venv /tmp/celvenv
    /tmp/celvenv/bin/pip install common-expression-language cel-python
    /tmp/celvenv/bin/python bench/cel_compare.py            # about a minute
    /tmp/celvenv/bin/python bench/cel_compare.py --quick    # fewer repeats

``cel-expr-python`` (Google's wrapper of cel-cpp) is measured too when it is installed in the
same venv; it is optional. A missing library is reported and skipped; the script exits 0.

What it prints:

1. compile time per expression (parse + check/plan, no data);
2. evaluation time per call for the four reference conditions over evidence lists of 1, 10
   and 100 items, both end to end from plain Python dicts ("e2e": conversion + evaluation,
   what a node pays for a fresh transaction) and evaluation alone on an activation that was
   converted once ("eval");
3. how each library reports a syntax error, an unknown function and a type error: the exact
   exception type and message, and where the line/column can be read from;
4. cost and determinism probes: nested comprehensions (and celpy with an iteration budget),
   deep nesting, out-of-range integers, filter scaling, all() over a map holding an
   ill-typed value, map iteration order.

Figures are the fastest of a few timed batches; nothing asserts on time. Ratios are
celpy / cel, so "30x" means celpy takes 30 times as long as the Rust-backed ``cel`` package.
cel-expr-python converts an Activation lazily and keeps what it converted, so its "eval"
figures reuse values converted on the first call; compare its "e2e" figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

# -- the reference conditions and realistic inputs ------------------------------------------

EXPRESSIONS: dict[str, str] = {
    "E1 builds.exists": (
        'evidence.builds.exists(b, b.body.digest == tx.body.digest && b.body.status == "success")'
    ),
    "E2 scans.all": (
        "evidence.scans.all(s, s.body.findings.critical == 0) && size(evidence.scans) > 0"
    ),
    "E3 approvals.filter": (
        "size(evidence.approvals.filter(a, a.actor != tx.actor && a.ts >= cutoff)) >= 2"
    ),
    "E4 findings<=param": "tx.body.findings.high <= params.max_high",
}
SIZES = (1, 10, 100)


def _reference(name: str, act: dict[str, Any]) -> bool:
    """The same conditions in plain Python: what every library must return."""
    tx, ev = act["tx"], act["evidence"]
    if name.startswith("E1"):
        return any(
            b["body"]["digest"] == tx["body"]["digest"] and b["body"]["status"] == "success"
            for b in ev["builds"]
        )
    if name.startswith("E2"):
        return all(s["body"]["findings"]["critical"] == 0 for s in ev["scans"]) and bool(
            ev["scans"]
        )
    if name.startswith("E3"):
        keep = [
            a for a in ev["approvals"] if a["actor"] != tx["actor"] and a["ts"] >= act["cutoff"]
        ]
        return len(keep) >= 2
    return bool(tx["body"]["findings"]["high"] <= act["params"]["max_high"])


SYNTAX_ERROR = "tx.body.digest =="
# `hasPrefix` is Go's spelling; CEL has startsWith. A realistic typo.
UNKNOWN_FUNCTION = 'evidence.builds.exists(b, b.body.digest.hasPrefix("sha256:"))'
# A threshold written as a string: int >= string has no overload.
TYPE_ERROR = 'size(evidence.approvals) >= "2"'

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
CUTOFF = "2026-01-01T00:00:00.000Z"


def _ts(i: int) -> str:
    """Fixed-width RFC 3339 like ``core.tx.format_ts``: such strings sort as times."""
    return f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00.000Z"


def _envelope(tx_type: str, actor: str, i: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": 1,
        "type": tx_type,
        "actor": actor,
        "key_id": f"{i:032x}",
        "ts": _ts(i),
        "nonce": i,
        "subject": {"kind": "service", "id": "payments"},
        "body": body,
        "refs": [],
    }


def make_activation(n: int) -> dict[str, Any]:
    """A deploy trigger and n items of each evidence kind, shaped like core.schemas bodies.

    The inputs make every condition do its full work: the only matching build is the last
    one (exists scans the list), every scan is clean (all scans the list), every approval
    passes the filter (filter keeps all n).
    """
    builds = [
        _envelope(
            "build.finished",
            "ci",
            i,
            {
                "artifact": "payments",
                "digest": DIGEST if i == n - 1 else OTHER_DIGEST,
                "commit": f"{i:040x}",
                "status": "success",
            },
        )
        for i in range(n)
    ]
    scans = [
        _envelope(
            "scan.finished",
            "scanner",
            i,
            {
                "digest": DIGEST,
                "scanner": "trivy",
                "findings": {"critical": 0, "high": i % 3, "medium": 4, "low": 9},
            },
        )
        for i in range(n)
    ]
    approvals = [
        _envelope("approval.granted", f"approver{i}", i, {"digest": DIGEST, "release": "v1"})
        for i in range(n)
    ]
    tx = _envelope(
        "deploy.started",
        "deployer",
        999,
        {
            "service": "payments",
            "environment": "prod",
            "version": "1.4.2",
            "digest": DIGEST,
            "strategy": "canary",
            "status": "started",
            "commits": ["c1", "c2"],
            # not in the deploy schema: lets E4 read findings off the same trigger
            "findings": {"critical": 0, "high": 2, "medium": 5, "low": 11},
        },
    )
    return {
        "tx": tx,
        "evidence": {"builds": builds, "scans": scans, "approvals": approvals},
        "params": {"max_high": 3},
        "cutoff": CUTOFF,
    }


# -- timing -----------------------------------------------------------------------------


@dataclass
class Timer:
    batch_seconds: float = 0.02
    batches: int = 5
    max_seconds: float = 1.5

    def per_call(self, fn: Callable[[], object]) -> float:
        """Seconds per call of the fastest timed batch (at least one call per batch).

        The fastest batch, as timeit advises: on a shared machine the slower batches measure
        the neighbours, not the library.
        """
        start = time.perf_counter()
        fn()  # warm up, and find the cost of one call
        one = max(time.perf_counter() - start, 1e-9)
        loops = max(1, int(self.batch_seconds / one))
        batches = max(1, min(self.batches, int(self.max_seconds / (one * loops)) or 1))
        samples = []
        for _ in range(batches):
            t0 = time.perf_counter()
            for _ in range(loops):
                fn()
            samples.append((time.perf_counter() - t0) / loops)
        return min(samples)


# -- library adapters -------------------------------------------------------------------


@dataclass
class Outcome:
    """What one library said about one bad expression."""

    phase: str  # "compile", "eval" or "ok"
    kind: str
    message: str
    position: str = ""
    note: str = ""


@dataclass
class Lib:
    key: str
    dist: str
    version: str = ""
    available: bool = False
    why_missing: str = ""

    # subclasses fill these in
    def setup(self) -> None: ...
    def compile(self, src: str) -> Any: ...
    def prepare(self, act: dict[str, Any]) -> Any: ...
    def eval_prepared(self, prog: Any, prepared: Any) -> Any: ...
    def eval_dict(self, prog: Any, act: dict[str, Any]) -> Any: ...
    def diagnose(self, src: str, act: dict[str, Any]) -> Outcome: ...


_CEL_POS = re.compile(r"<input>:(\d+):(\d+): (.*)")


def _position_from_message(msg: str) -> tuple[str, str]:
    """cel-rust and cel-cpp put ``<input>:LINE:COL: reason`` inside the message text."""
    m = _CEL_POS.search(msg)
    if not m:
        return "", ""
    return f"line {m.group(1)}, column {m.group(2)} (parsed from the message)", m.group(3)


class CelRust(Lib):
    """``common-expression-language``: PyO3 bindings to the cel-rust interpreter."""

    def setup(self) -> None:
        import cel

        self.mod = cel

    def compile(self, src: str) -> Any:
        return self.mod.compile(src)

    def prepare(self, act: dict[str, Any]) -> Any:
        return self.mod.Context(variables=act)

    def eval_prepared(self, prog: Any, prepared: Any) -> Any:
        return prog.execute(prepared)

    def eval_dict(self, prog: Any, act: dict[str, Any]) -> Any:
        return prog.execute(act)

    def diagnose(self, src: str, act: dict[str, Any]) -> Outcome:
        try:
            prog = self.mod.compile(src)
        except Exception as exc:
            pos, _ = _position_from_message(str(exc))
            return Outcome("compile", type(exc).__name__, str(exc), pos)
        refs = prog.references()
        unknown = sorted(set(refs["functions"]) - CEL_RUST_ALLOWED_FUNCTIONS)
        note = f"references(): functions={refs['functions']}, variables={refs['variables']}"
        if unknown:
            note += f"  -> an allow-list check at deploy time would refuse {unknown}"
        try:
            result = prog.execute(act)
        except Exception as exc:
            return Outcome("eval", type(exc).__name__, str(exc), "none (no position)", note)
        return Outcome("ok", "", repr(result), "", note)


# Functions and operators a contract may use, as cel-rust's Program.functions() names them.
CEL_RUST_ALLOWED_FUNCTIONS = {
    "!_",
    "-_",
    "@not_strictly_false",
    "@in",
    "_!=_",
    "_%_",
    "_&&_",
    "_*_",
    "_+_",
    "_-_",
    "_/_",
    "_<=_",
    "_<_",
    "_==_",
    "_>=_",
    "_>_",
    "_?_:_",
    "_[_]",
    "_||_",
    "contains",
    "endsWith",
    "has",
    "int",
    "size",
    "startsWith",
    "string",
}


class CelPy(Lib):
    """``cel-python`` (module ``celpy``): pure-Python lark parser and tree-walking evaluator."""

    compiled: bool = False

    def setup(self) -> None:
        import celpy
        from celpy import celparser

        self.mod = celpy
        self.celparser = celparser
        runner = celpy.CompiledRunner if self.compiled else celpy.InterpretedRunner
        self.tree_class = runner.tree_node_class
        self._use_parser()
        self.env = celpy.Environment(runner_class=runner)

    def _use_parser(self) -> None:
        # celpy keeps ONE lark parser per process (CELParser.CEL_PARSER), built with the tree
        # class of the first Environment. CompiledRunner needs TranspilerTree nodes, so when
        # both runners are measured in one process the parser is rebuilt before compiling.
        parser = self.celparser.CELParser
        current = parser.CEL_PARSER
        if current is None or current.options.tree_class is not self.tree_class:
            parser.CEL_PARSER = None
            parser(tree_class=self.tree_class)

    def compile(self, src: str) -> Any:
        self._use_parser()
        return self.env.program(self.env.compile(src))

    def prepare(self, act: dict[str, Any]) -> Any:
        return {name: self.mod.json_to_cel(value) for name, value in act.items()}

    def eval_prepared(self, prog: Any, prepared: Any) -> Any:
        return to_python(prog.evaluate(prepared))

    def eval_dict(self, prog: Any, act: dict[str, Any]) -> Any:
        return self.eval_prepared(prog, self.prepare(act))

    def diagnose(self, src: str, act: dict[str, Any]) -> Outcome:
        try:
            prog = self.compile(src)
        except self.mod.CELParseError as exc:
            reason = str(exc.__context__).splitlines()[0] if exc.__context__ else ""
            return Outcome(
                "compile",
                type(exc).__name__,
                str(exc),
                f"exc.line={exc.line}, exc.column={exc.column} (attributes)",
                f"reason only in exc.__context__ (lark): {reason!r}",
            )
        try:
            result = prog.evaluate(self.prepare(act))
        except self.mod.CELEvalError as exc:
            return Outcome(
                "eval",
                type(exc).__name__,
                str(exc),
                f"exc.line={exc.line}, exc.column={exc.column} (attributes)",
            )
        return Outcome("ok", "", repr(result))


class CelPyCompiled(CelPy):
    compiled = True


def celpy_budgeted_program(lib: CelPy, src: str, limit: int) -> Any:
    """celpy with a deterministic iteration budget, from a small Evaluator subclass.

    ``Evaluator.visit`` runs once for the whole expression and once per comprehension
    step (each step gets a sub-evaluator), so counting calls counts iterations, the same
    unit as cel-cpp's ``comprehension_max_iterations``. It relies on celpy internals
    (``sub_evaluator``, ``Runner.new_activation``): pin the version if we adopt it.
    """
    celpy = lib.mod
    from celpy.evaluation import Evaluator

    class BudgetExceeded(Exception):
        pass

    class BudgetedEvaluator(Evaluator):
        def __init__(self, ast: Any, activation: Any, budget: list[int]) -> None:
            super().__init__(ast, activation)
            self.budget = budget

        def visit(self, tree: Any) -> Any:
            self.budget[0] -= 1
            if self.budget[0] < 0:
                raise BudgetExceeded(f"CEL iteration budget of {limit} exceeded")
            return super().visit(tree)

        def sub_evaluator(self, ast: Any) -> Any:
            return BudgetedEvaluator(ast, self.activation, self.budget)

    class BudgetedRunner(celpy.InterpretedRunner):
        def evaluate(self, context: Any) -> Any:
            ev = BudgetedEvaluator(self.ast, self.new_activation(), [limit])
            return ev.evaluate(context)

    lib._use_parser()
    env = celpy.Environment(runner_class=BudgetedRunner)
    return env.program(env.compile(src))


class CelCpp(Lib):
    """``cel-expr-python``: Google's pybind11 wrapper of cel-cpp, with the type checker."""

    def setup(self) -> None:
        from cel_expr_python import cel

        self.mod = cel
        t = cel.Type
        obj = t.Map(t.STRING, t.DYN)
        self.env = cel.NewEnv(
            variables={
                "tx": obj,
                "evidence": t.Map(t.STRING, t.List(obj)),
                "params": obj,
                "cutoff": t.STRING,
            }
        )

    def compile(self, src: str) -> Any:
        return self.env.compile(src)

    def prepare(self, act: dict[str, Any]) -> Any:
        return self.env.Activation(act)

    def _unwrap(self, value: Any) -> Any:
        if value.type() == self.mod.Type.ERROR:  # runtime errors come back as values
            raise RuntimeError(value.value())
        return value.plain_value()

    def eval_prepared(self, prog: Any, prepared: Any) -> Any:
        return self._unwrap(prog.eval(prepared))

    def eval_dict(self, prog: Any, act: dict[str, Any]) -> Any:
        return self._unwrap(prog.eval(data=act))

    def diagnose(self, src: str, act: dict[str, Any]) -> Outcome:
        try:
            prog = self.env.compile(src)
        except Exception as exc:
            pos, _ = _position_from_message(str(exc))
            return Outcome("compile", type(exc).__name__, str(exc), pos)
        value = prog.eval(data=act)
        if value.type() == self.mod.Type.ERROR:
            return Outcome("eval", "Value(type=ERROR)", str(value.value()), "none")
        return Outcome("ok", "", repr(value.plain_value()))


def to_python(value: Any) -> Any:
    """celpy returns celtypes (subclasses of bool's int, str, list, dict...): make them plain."""
    if value is None:
        return None
    name = type(value).__name__
    if name == "BoolType":
        return bool(value)
    if isinstance(value, dict):
        return {to_python(k): to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_python(v) for v in value]
    for plain in (int, float, str, bytes):
        if isinstance(value, plain):
            return plain(value)
    return value


LIBS: list[Lib] = [
    CelRust("cel", "common-expression-language"),
    CelPy("celpy", "cel-python"),
    CelPyCompiled("celpy-C", "cel-python"),
    CelCpp("cel-cpp", "cel-expr-python"),
]
REQUIRED = ("cel", "celpy")


def load_libs() -> list[Lib]:
    ready = []
    for lib in LIBS:
        try:
            lib.version = metadata.version(lib.dist)
            lib.setup()
        except Exception as exc:  # ImportError, PackageNotFoundError, or a broken install
            lib.why_missing = f"{type(exc).__name__}: {exc}"
            continue
        lib.available = True
        ready.append(lib)
    return ready


# -- report -----------------------------------------------------------------------------


def fmt_us(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    if us >= 100_000:
        return f"{us / 1000:,.0f} ms"
    if us >= 1000:
        return f"{us / 1000:,.2f} ms"
    return f"{us:,.1f} us"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:,.0f}x" if a / b >= 10 else f"{a / b:,.1f}x"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print()


def section(title: str) -> None:
    print()
    print(f"== {title} " + "=" * max(0, 86 - len(title)))
    print()


def show_message(msg: str, limit: int = 1200) -> str:
    body = msg if len(msg) <= limit else msg[:limit] + f" [... {len(msg) - limit} more chars]"
    return "\n".join("      | " + line for line in body.splitlines() or [""])


# -- the runs ---------------------------------------------------------------------------


def bench_compile(libs: list[Lib], timer: Timer) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for lib in libs:
        for name, src in EXPRESSIONS.items():
            out[lib.key, name] = timer.per_call(lambda lib=lib, src=src: lib.compile(src))
    return out


def bench_eval(
    libs: list[Lib], timer: Timer
) -> tuple[dict[tuple[str, str, int, str], float], list[str], dict[tuple[str, int], float]]:
    out: dict[tuple[str, str, int, str], float] = {}
    prep: dict[tuple[str, int], float] = {}
    problems: list[str] = []
    programs = {
        (lib.key, name): lib.compile(src) for lib in libs for name, src in EXPRESSIONS.items()
    }
    for n in SIZES:
        act = make_activation(n)
        for lib in libs:
            prepared = lib.prepare(act)
            prep[lib.key, n] = timer.per_call(lambda lib=lib, act=act: lib.prepare(act))
            for name in EXPRESSIONS:
                prog = programs[lib.key, name]
                try:
                    got = lib.eval_dict(prog, act)
                    again = lib.eval_prepared(prog, prepared)
                except Exception as exc:
                    problems.append(f"{lib.key} {name} n={n}: {type(exc).__name__}: {exc}")
                    continue
                want = _reference(name, act)
                if got is not want or again is not want:
                    problems.append(f"{lib.key} {name} n={n}: want {want}, got {got!r}/{again!r}")
                out[lib.key, name, n, "e2e"] = timer.per_call(
                    lambda lib=lib, prog=prog, act=act: lib.eval_dict(prog, act)
                )
                out[lib.key, name, n, "eval"] = timer.per_call(
                    lambda lib=lib, prog=prog, prepared=prepared: lib.eval_prepared(prog, prepared)
                )
    return out, problems, prep


def report_errors(libs: list[Lib]) -> None:
    act = make_activation(1)
    empty = make_activation(1)
    empty["evidence"] = {"builds": [], "scans": [], "approvals": []}
    cases = [
        ("syntax error", SYNTAX_ERROR, act),
        ("unknown function (1 build)", UNKNOWN_FUNCTION, act),
        ("unknown function (0 builds)", UNKNOWN_FUNCTION, empty),
        ("type error", TYPE_ERROR, act),
    ]
    for title, src, data in cases:
        print(f"-- {title}: {src}")
        for lib in libs:
            if lib.key == "celpy-C":
                continue  # same parser and messages as celpy
            o = lib.diagnose(src, data)
            if o.phase == "ok":
                print(f"  {lib.key:8} NO ERROR: evaluated to {o.message}")
            else:
                print(f"  {lib.key:8} refused at {o.phase} time: {o.kind}")
                print(f"      position: {o.position or 'none'}")
                print("      message (exact str(exc)):")
                print(show_message(o.message))
            if o.note:
                print(f"      note: {o.note}")
        print()


def probe(lib: Lib, src: str, act: dict[str, Any]) -> str:
    t0 = time.perf_counter()
    try:
        prog = lib.compile(src)
    except BaseException as exc:  # RecursionError included
        msg = str(exc)
        msg = msg[msg.index("ERROR: ") :] if "ERROR: " in msg else msg
        first = msg.splitlines()[0] if msg else ""
        return f"compile: {type(exc).__name__}: {first[:150]}"
    try:
        result = lib.eval_dict(prog, act)
    except BaseException as exc:
        msg = str(exc).splitlines()[0][:110] if str(exc) else ""
        return f"eval {fmt_us(time.perf_counter() - t0)}: {type(exc).__name__}: {msg}"
    shown = repr(result)
    shown = shown if len(shown) < 60 else shown[:57] + "..."
    return f"{fmt_us(time.perf_counter() - t0)} -> {shown}"


def report_probes(libs: list[Lib]) -> None:
    a100 = make_activation(100)
    nested2 = (
        "evidence.approvals.all(a, evidence.approvals.all(b, a.ts >= cutoff || b.ts >= cutoff))"
    )
    nested3 = (
        "evidence.approvals.all(a, evidence.approvals.all(b, evidence.approvals.all(c,"
        " a.ts >= cutoff || b.ts >= cutoff || c.ts >= cutoff)))"
    )
    probes: list[tuple[str, str, dict[str, Any], set[str]]] = [
        ("2-nested all, n=100 (10,100 iterations)", nested2, a100, set()),
        ("3-nested all, n=100 (~1e6 iterations)", nested3, a100, {"celpy", "celpy-C"}),
        ("parentheses nested 120 deep", "(" * 120 + "true" + ")" * 120, a100, set()),
        ("`1 + 1 + ...` 2,000 terms", "1" + " + 1" * 2000, a100, set()),
        (
            "int 2**63 in the input",
            "params.max_high",
            {**a100, "params": {"max_high": 2**63}},
            set(),
        ),
    ]
    for title, src, data, skip in probes:
        print(f"-- {title}")
        for lib in libs:
            if lib.key in skip:
                print(f"  {lib.key:8} skipped (~1e6 iterations at ~1 ms each: many minutes)")
                continue
            print(f"  {lib.key:8} {probe(lib, src, data)}")
            if lib.key == "celpy" and src == nested2 and isinstance(lib, CelPy):
                prog = celpy_budgeted_program(lib, src, 1000)
                t0 = time.perf_counter()
                try:
                    shown = repr(prog.evaluate(lib.prepare(data)))
                except Exception as exc:
                    shown = f"{type(exc).__name__}: {exc}"
                took = fmt_us(time.perf_counter() - t0)
                print(f"  {'celpy+budget':8} (Evaluator subclass, limit 1,000) {took}: {shown}")
        print()

    print("-- filter scaling: `size(evidence.builds.filter(b, b.ok)) > 0`, n tiny maps (eval only)")
    for lib in libs:
        cells = []
        try:
            prog = lib.compile("size(evidence.builds.filter(b, b.ok)) > 0")
            for n in (100, 200, 400, 800):
                items = [{"i": i, "ok": True} for i in range(n)]
                prepared = lib.prepare({"evidence": {"builds": items}})
                t0 = time.perf_counter()
                lib.eval_prepared(prog, prepared)
                cells.append(f"n={n}: {fmt_us(time.perf_counter() - t0)}")
        except Exception as exc:
            cells.append(f"{type(exc).__name__}: {exc}")
        print(f"  {lib.key:8} " + ", ".join(cells))
    print()

    print("-- all() over a MAP with one ill-typed and one failing value, 20 fresh evaluations")
    print("   `params.limits.all(k, params.limits[k] > 0)`: the CEL spec says false (false wins")
    print("   over an error whatever the order)")
    limits: dict[str, Any] = {f"k{i}": 1 for i in range(10)}
    limits["k3"] = "x"
    limits["k7"] = 0
    data = {**make_activation(1), "params": {"max_high": 3, "limits": limits}}
    for lib in libs:
        try:
            prog = lib.compile("params.limits.all(k, params.limits[k] > 0)")
        except Exception as exc:
            print(f"  {lib.key:8} compile: {type(exc).__name__}: {exc}")
            continue
        seen: dict[str, int] = {}
        for _ in range(20):
            try:
                out = repr(lib.eval_dict(prog, data))
            except Exception as exc:
                out = type(exc).__name__
            seen[out] = seen.get(out, 0) + 1
        verdict = "deterministic" if len(seen) == 1 else "NOT deterministic"
        print(f"  {lib.key:8} {seen}: {verdict}")
    print()

    print("-- map iteration order: `tx.body.map(k, k)` on the same dict, 20 fresh evaluations")
    act = make_activation(1)
    for lib in libs:
        try:
            prog = lib.compile("tx.body.map(k, k)")
            orders = {tuple(lib.eval_dict(prog, act)) for _ in range(20)}
        except Exception as exc:
            print(f"  {lib.key:8} {type(exc).__name__}: {exc}")
            continue
        verdict = "deterministic" if len(orders) == 1 else "NOT deterministic"
        print(f"  {lib.key:8} {len(orders)} distinct order(s): {verdict}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short batch per figure")
    args = parser.parse_args()
    timer = Timer(batch_seconds=0.005, batches=1, max_seconds=0.3) if args.quick else Timer()

    print("CEL library comparison for the opsledger contract engine (ADR 0005)")
    print(
        f"python {platform.python_version()} ({sys.executable}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    libs = load_libs()
    for lib in LIBS:
        state = f"{lib.version}" if lib.available else f"MISSING ({lib.why_missing})"
        print(f"  {lib.key:8} {lib.dist:28} {state}")
    missing = [lib for lib in LIBS if lib.key in REQUIRED and not lib.available]
    if missing:
        names = " ".join(sorted({lib.dist for lib in missing}))
        print(
            f"\nNOTE: {names} not importable here; its columns are skipped. Install with:\n"
            f"  python3 -m venv /tmp/celvenv && /tmp/celvenv/bin/pip install {names}\n"
            f"  /tmp/celvenv/bin/python {sys.argv[0]}"
        )
    if not libs:
        print("\nNo CEL library available: nothing to measure.")
        return 0
    keys = [lib.key for lib in libs]

    section("1. compile time per expression (program ready to evaluate, no data)")
    ct = bench_compile(libs, timer)
    rows = []
    for name in EXPRESSIONS:
        rows.append(
            [name]
            + [fmt_us(ct[k, name]) for k in keys]
            + [ratio(ct.get(("celpy", name)), ct.get(("cel", name)))]
        )
    print_table(["expression", *keys, "celpy/cel"], rows)
    for name, src in EXPRESSIONS.items():
        print(f"  {name}: {src}")

    section("2. evaluation time per call")
    times, problems, prep = bench_eval(libs, timer)
    for mode, what in (
        ("e2e", "end to end from Python dicts: convert the activation + evaluate"),
        ("eval", "evaluation only, on an activation converted once"),
    ):
        print(f"[{mode}] {what}")
        rows = []
        for name in EXPRESSIONS:
            for n in SIZES:
                vals = {k: times.get((k, name, n, mode)) for k in keys}
                rows.append(
                    [f"{name} n={n}"]
                    + [fmt_us(vals[k]) for k in keys]
                    + [
                        ratio(vals.get("celpy"), vals.get("cel")),
                        ratio(vals.get("celpy-C"), vals.get("cel")),
                    ]
                )
        print_table(["expression, evidence items", *keys, "celpy/cel", "celpy-C/cel"], rows)
    print("[prepare] converting the activation once (cel.Context / celpy.json_to_cel / Activation)")
    rows = [
        [f"n={n}"]
        + [fmt_us(prep.get((k, n))) for k in keys]
        + [ratio(prep.get(("celpy", n)), prep.get(("cel", n)))]
        for n in SIZES
    ]
    print_table(["activation", *keys, "celpy/cel"], rows)
    if problems:
        print("RESULT PROBLEMS (results differ from the plain-Python reference):")
        for p in problems:
            print("  " + p)
    else:
        print("Every library matched the plain-Python reference on every condition and size.")

    section("3. error reporting")
    report_errors(libs)

    section("4. cost and determinism probes")
    report_probes(libs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
