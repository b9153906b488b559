"""Pipelines as code: what a file parses to, and errors that name file:line: field."""

from __future__ import annotations

import re
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opsledger.core import ConfigError
from opsledger.pipeline import STAGES, JobDef, load_pipeline, parse_pipeline
from opsledger.pipeline.conditions import ConditionContext, parse_condition
from opsledger.pipeline.spec import parse_duration

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pipelines"
A = "pipeline: x\nstages:\n  build:\n    jobs:\n      a:\n"  # job a's body follows


def _error(text: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, source="p.yml", **kwargs)
    return info.value.message


def test_smallest_pipeline_parses_as_written() -> None:
    spec = load_pipeline(FIXTURES / "shop.yml")
    assert spec.name == "shop"
    assert spec.stages == ("build", "test")
    assert list(spec.jobs) == ["compile", "unit"]
    assert spec.jobs["unit"].needs == ("compile",)
    assert spec.jobs["compile"].artifacts == ("app.txt",)
    assert spec.root == FIXTURES
    assert spec.digest.startswith("sha256:")


def test_full_pipeline_features() -> None:
    spec = load_pipeline(FIXTURES / "full.yml", {"env": "prod"})
    assert spec.vars == {"env": "prod"}
    # run: commands read vars from the environment (values never become shell code)
    assert spec.env == {"SHARED": "yes", "OPSLEDGER_VAR_ENV": "prod"}
    compile_ = spec.jobs["compile"]
    assert compile_.steps[0].name == "write"
    assert "echo ${OPSLEDGER_VAR_ENV} >" in compile_.steps[0].run
    assert spec.env["OPSLEDGER_VAR_ENV"] == "prod"  # --var overrides vars:
    assert compile_.evidence is not None
    assert compile_.evidence.type == "build"
    assert compile_.evidence.artifact == "dist/*.txt"
    assert [n for n in spec.jobs if n.startswith("unit")] == [
        "unit[py=3.11,os=linux]",
        "unit[py=3.12,os=linux]",
    ]
    unit = spec.jobs["unit[py=3.12,os=linux]"]
    assert unit.env == {"PY": "3.12", "OPSLEDGER_MATRIX_OS": "linux", "OPSLEDGER_MATRIX_PY": "3.12"}
    assert unit.timeout == 300
    assert unit.retries == 2
    assert {k: str(v) for k, v in unit.secrets.items()} == {
        "TOKEN": "env:SHOP_TOKEN",
        "CERT": "file:/etc/hostname",
    }
    assert unit.steps[0].run == "echo 3 passed in 0.1s"
    assert unit.evidence is not None and unit.evidence.parser == "counts"
    # needing a matrix job by its base name means needing every expansion
    assert spec.jobs["report"].needs == ("unit[py=3.11,os=linux]", "unit[py=3.12,os=linux]")
    order = spec.order()
    assert order.index("compile") > order.index("lint")
    assert order.index("report") > order.index("unit[py=3.12,os=linux]")
    assert spec.ancestors("report")[:2] == ["lint", "compile"]
    # job definitions travel to workers as JSON and come back the same
    for job in spec.jobs.values():
        again = JobDef.from_dict(job.to_dict())
        assert again.to_dict() == job.to_dict()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pipeline: x\nstages:\n  deliver:\n    jobs: {a: {steps: [b]}}\n",
            r"p\.yml:3: stages\.deliver: unknown stage",
        ),
        (
            "pipeline: x\nstages:\n  test:\n    jobs: {a: {steps: [b]}}\n"
            "  build:\n    jobs: {c: {steps: [d]}}\n",
            r"p\.yml:5: stages\.build: out of order",
        ),
        (
            A + "        needs: [nope]\n        steps: [b]\n",
            r"p\.yml:5: stages\.build\.jobs\.a\.needs: unknown job nope",
        ),
        (
            A + "        needs: [b]\n        steps: [x]\n"
            "      b:\n        needs: [a]\n        steps: [y]\n",
            r"p\.yml:5: stages\.build\.jobs\.a\.needs: a cycle: a → b → a",
        ),
        (
            A + "        needs: [b]\n        steps: [x]\n"
            "  test:\n    jobs:\n      b:\n        steps: [y]\n",
            r"p\.yml:5: stages\.build\.jobs\.a\.needs: b is in a later stage \(test\)",
        ),
        (
            A + "        steps: [x]\n        timeout: soon\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.timeout: a duration like 30s",
        ),
        (
            A + "        steps: [x]\n        retries: -1\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.retries: an integer",
        ),
        (
            A + "        steps:\n          - run: x\n          - cmd: y\n",
            r"p\.yml:8: stages\.build\.jobs\.a\.steps\[1\]\.cmd: unknown key",
        ),
        (
            A + "        steps:\n          - run: echo ${{ vars.who }}\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.steps\[0\]\.run: unknown vars\.who",
        ),
        (
            A + "        steps: [x]\n        secrets:\n          T: hunter2\n",
            r"p\.yml:8: stages\.build\.jobs\.a\.secrets\.T: a reference env:VARIABLE",
        ),
        (
            A + "        steps: [x]\n        if: vars.nope == 'x'\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.if: unknown name vars\.nope",
        ),
        (
            A + "        steps: [x]\n        evidence: {type: test, parser: bandit}\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.evidence\.parser: one of counts, exit-code",
        ),
        (
            A + "        steps: [x]\n        evidence: {type: build}\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.evidence: build evidence needs the job's artifacts",
        ),
        (
            A + "        steps: [x]\n        artifacts: [../up.txt]\n",
            r"p\.yml:7: stages\.build\.jobs\.a\.artifacts\[0\]: a path inside",
        ),
        (
            "pipeline: x\nstages:\n  build:\n    jobs:\n      a: {steps: [x]\n",
            r"p\.yml:\d+: not valid YAML",
        ),
        ("- a\n- b\n", r"p\.yml:1: pipeline: the file must be a mapping"),
        ("pipeline: Has Space\nstages: {}\n", r"p\.yml:1: pipeline: a name like shop"),
        ("pipeline: x\nstagez: {}\n", r"p\.yml:2: stagez: unknown key"),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    assert re.match(expected, _error(text)), _error(text)


def test_stage_order_is_fixed() -> None:
    assert STAGES == ("plan", "code", "build", "test", "release", "deploy", "operate", "monitor")
    body = "".join(f"  {s}:\n    jobs:\n      j{i}: {{steps: [x]}}\n" for i, s in enumerate(STAGES))
    spec = parse_pipeline("pipeline: all\nstages:\n" + body)
    assert spec.stages == STAGES


def test_deploy_is_validated_by_the_deploy_package() -> None:
    text = (
        "pipeline: x\nstages:\n  deploy:\n    jobs:\n      ship:\n"
        "        deploy: {service: shop, environment: prod, strategy: bogus}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, source="p.yml")
    # the deploy package names the problem, at the line of the mapping
    assert info.value.message.startswith("p.yml:6")
    assert "strategy" in info.value.message


def test_durations() -> None:
    assert parse_duration("30s", "t") == 30
    assert parse_duration("5m", "t") == 300
    assert parse_duration("1h", "t") == 3600
    assert parse_duration("250ms", "t") == 0.25
    assert parse_duration(12, "t") == 12
    for bad in ("0s", "-1s", "8d", True, "5 minutes"):
        with pytest.raises(ConfigError):
            parse_duration(bad, "t")


@pytest.mark.parametrize(
    ("text", "ok", "failed", "values", "expected"),
    [
        ("vars.env == 'prod'", True, False, {"vars.env": "prod"}, True),
        ("${{ vars.env }} == 'prod'", True, False, {"vars.env": "dev"}, False),
        ("${{ vars.env == 'prod' }}", True, False, {"vars.env": "prod"}, True),
        ("vars.env == 'prod'", False, True, {"vars.env": "prod"}, False),  # implicit success()
        ("failure()", False, True, {}, True),
        ("failure()", True, False, {}, False),
        ("always()", False, True, {}, True),
        (
            "!(vars.a == 'x') && (vars.b != 'y' || always())",
            True,
            False,
            {"vars.a": "z", "vars.b": "y"},
            True,
        ),
        ("env.CI == 'true'", True, False, {"env.CI": "true"}, True),
    ],
)
def test_conditions(
    text: str, ok: bool, failed: bool, values: dict[str, str], expected: bool
) -> None:
    cond = parse_condition(text, "t")
    ctx = ConditionContext(needs_ok=ok, needs_failed=failed, cancelled=False, values=values)
    assert cond.evaluate(ctx) is expected


@pytest.mark.parametrize(
    "text", ["", "vars.a ==", "os.system('x')", "(always()", "a == b", "1 + 1"]
)
def test_bad_conditions_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_condition(text, "t")


# -- no input crashes the parser: anything but a ConfigError is a bug --
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(
        [
            "x",
            "build",
            "test",
            "compile",
            "30s",
            "env:X",
            "file:/x",
            "${{ vars.a }}",
            "${{",
            "always()",
            "a == 'b'",
        ]
    ),
    st.text(string.printable, max_size=8),
)
_keys = st.sampled_from(
    [
        "pipeline",
        "stages",
        "jobs",
        "steps",
        "run",
        "needs",
        "env",
        "secrets",
        "timeout",
        "retries",
        "if",
        "matrix",
        "artifacts",
        "evidence",
        "type",
        "parser",
        "build",
        "test",
        "deploy",
        "vars",
        "compile",
        "unit",
        "name",
    ]
)
_docs = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs)
@example({"pipeline": "x", "stages": {"build": {"jobs": {"a": {"steps": [None]}}}}})
@example(
    {"pipeline": "x", "stages": {"build": {"jobs": {"a": {"steps": ["x"], "matrix": {"a": [[]]}}}}}}
)
def test_arbitrary_documents_raise_only_config_errors(doc: Any) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_pipeline(text, source="h.yml")
    except ConfigError as exc:  # anything else fails the test
        message = exc.message
    else:
        return
    assert message.startswith("h.yml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
@example("a: &a [*a]")
@example("? [a]\n: b\n")
@example("!!python/object:os.system x")
def test_arbitrary_text_raises_only_config_errors(text: str) -> None:
    try:
        parse_pipeline(text, source="h.yml")
    except ConfigError as exc:  # anything else fails the test
        message = exc.message
    else:
        return
    assert message.startswith("h.yml")


def test_yaml_alias_bombs_are_refused_quickly() -> None:
    levels = ["          l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"]
    for i in range(1, 8):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        levels.append(f"          l{i}: &l{i} [{refs}]\n")
    text = "pipeline: x\nstages:\n  deploy:\n    jobs:\n      s:\n        deploy:\n" + "".join(
        levels
    )
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, source="bomb.yml")
    assert info.value.message.startswith("bomb.yml:6: stages.deploy.jobs.s.deploy:")


def test_a_var_is_data_to_the_shell_never_code(tmp_path: Path) -> None:
    """A --var value (a branch name in CI) cannot inject a command into run:."""
    text = (
        "pipeline: p\nstages:\n  build:\n    jobs:\n      j:\n"
        '        steps:\n          - run: "echo branch=${{ vars.branch }}"\n'
    )
    spec = parse_pipeline(text, "p.yml", {"branch": "x; touch pwned #"})
    (step,) = spec.jobs["j"].steps
    assert step.run == "echo branch=${OPSLEDGER_VAR_BRANCH}"
    assert spec.env["OPSLEDGER_VAR_BRANCH"] == "x; touch pwned #"
    done = subprocess.run(
        step.run,
        shell=True,
        cwd=tmp_path,
        env=spec.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "branch=x; touch pwned #\n"
    assert not (tmp_path / "pwned").exists()
