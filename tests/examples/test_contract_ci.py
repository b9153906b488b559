"""examples/contract-ci: the Vyper project's pipeline, run as a user runs it.

``opsledger pipeline run`` (the CLI, as a subprocess) runs the example's pipeline in a copy
of it (never in the repository itself), against real anvil nodes; the tests then read the
job results and the typed evidence from the ledger. The gas check is shown failing on the
deliberately more expensive variant in ``variants/``, naming the function whose gas grew,
and the scripts are run standalone too (``python ci/gas_check.py ...``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.app import Home

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "contract-ci"
SCRIPT_TIMEOUT = 180


def copy_example(target: Path) -> Path:
    """A clean copy of the example (no build output, no caches) to run and modify."""
    project = target / "contract-ci"
    shutil.copytree(
        EXAMPLE,
        project,
        ignore=shutil.ignore_patterns("build", "__pycache__", "gas-report.json", ".pytest_cache"),
    )
    return project


def script_env() -> dict[str, str]:
    """The scripts' environment: this venv's ``python`` first on PATH; no inherited node,
    tolerance or CI identity (the run signs as the test home's own ``ci`` actor)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in (
        "CONTRACT_CI_RPC_URL",
        "GAS_TOLERANCE_PERCENT",
        "OPSLEDGER_KEY",
        "OPSLEDGER_KEY_FILE",
        "OPSLEDGER_ACTOR",
        "OPSLEDGER_HOME",
    ):
        env.pop(name, None)
    return env


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


@pytest.fixture(scope="module")
def gas_check() -> Iterator[ModuleType]:
    """``ci/gas_check.py`` imported as a module, for its pure comparison."""
    ci = str(EXAMPLE / "ci")
    sys.path.insert(0, ci)
    bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # leave no __pycache__ in the example
    try:
        module = importlib.import_module("gas_check")
        yield module
    finally:
        sys.dont_write_bytecode = bytecode
        sys.path.remove(ci)
        for name in ("gas_check", "gas_scenarios", "chain"):
            sys.modules.pop(name, None)


def test_compare_names_each_kind_of_failure(gas_check: ModuleType) -> None:
    snapshot = {"transfer": 1000, "mint": 1000, "approve": 1000, "gone": 10}
    measured = {"transfer": 1051, "mint": 1050, "approve": 900, "fresh": 7}
    abi = ["approve", "fresh", "mint", "transfer", "unmeasured"]
    findings = {f.function: f for f in gas_check.compare(snapshot, measured, abi, 5.0)}
    verdicts = {name: f.verdict for name, f in findings.items()}
    assert verdicts == {
        "transfer": "regression",  # +5.1% > 5%
        "mint": "ok",  # exactly +5% is within tolerance
        "approve": "cheaper",
        "gone": "missing",
        "fresh": "new",
        "unmeasured": "no-scenario",
    }
    failed = sorted(name for name, f in findings.items() if f.failed)
    assert failed == ["fresh", "gone", "transfer", "unmeasured"]
    line = findings["transfer"].line(5.0)
    assert line.startswith("FAIL transfer: gas 1000 -> 1051 (+5.10%)")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    document=st.one_of(
        _JSON.map(json.dumps),
        st.dictionaries(st.text(max_size=8), _JSON, max_size=4).map(
            lambda gas: json.dumps({"gas": gas})
        ),
        st.text(max_size=40),
    )
)
def test_snapshot_reader_accepts_only_function_to_integer(
    gas_check: ModuleType, document: str
) -> None:
    """Any file: either a {function: positive integer} map comes back, or exit status 2 (a setup
    error, told apart from a failed check), never a traceback."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "snapshot.json"
        path.write_text(document)
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                snapshot = gas_check.read_snapshot(path)
            except SystemExit as exc:
                code = exc.code
            else:
                code = 0
    if code == 0:
        gas = snapshot["gas"]
        assert all(isinstance(k, str) and type(v) is int and v > 0 for k, v in gas.items())
    else:
        assert code == 2


def run_pipeline(project: Path, home: Path) -> tuple[int, dict[str, Any]]:
    """``opsledger pipeline run pipeline.yaml --json`` as a user runs it; (exit, run)."""
    opsledger = Path(sys.executable).with_name("opsledger")
    result = subprocess.run(
        [str(opsledger), "--home", str(home), "pipeline", "run", "pipeline.yaml", "--json"],
        cwd=project,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT * 2,
        check=False,
    )
    try:
        run_state = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pipeline run printed no JSON\n{explain(result)}")
    return result.returncode, run_state


def ledger_rows(home: Path, tx_type: str, subject: str) -> list[dict[str, Any]]:
    """Bodies (with the actor) of ``tx_type`` transactions about ``subject``."""
    client = Home(home).client()
    try:
        rows = client.list_transactions({"type": tx_type, "subject": subject, "limit": 100})
    finally:
        client.close()
    return [{**row["transaction"]["body"], "actor": row["transaction"]["actor"]} for row in rows]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    Home(path).init(admin="alice", builtin_contracts=False)
    return path


@pytest.mark.anvil
@pytest.mark.slow
def test_pipeline_compiles_tests_checks_gas_and_forks(project: Path, home: Path) -> None:
    code, run_state = run_pipeline(project, home)
    assert code == 0, run_state
    assert run_state["status"] == "success"
    jobs = run_state["jobs"]
    assert {name: job["status"] for name, job in jobs.items()} == dict.fromkeys(
        ["compile", "unit", "gas", "fork"], "success"
    )

    # The artifact on the ledger is what ci/build.py makes, byte for byte (vyper is
    # deterministic): run the script standalone in the same copy and compare.
    built = run(project, "ci/build.py")
    assert built.returncode == 0, explain(built)
    token = project / "build" / "Token.json"
    digest = "sha256:" + hashlib.sha256(token.read_bytes()).hexdigest()
    assert jobs["compile"]["artifacts"] == {"build/Token.json": digest}
    artifact = json.loads(token.read_text())
    source = (project / "contracts" / "Token.vy").read_bytes()
    assert artifact["source_sha256"] == hashlib.sha256(source).hexdigest()

    run_id = run_state["run"]
    finished = {b["job"]: b for b in ledger_rows(home, "job.finished", f"run:{run_id}")}
    assert {job: (b["status"], b["exit_code"]) for job, b in finished.items()} == dict.fromkeys(
        ["compile", "unit", "gas", "fork"], ("success", 0)
    )
    assert {b["actor"] for b in finished.values()} == {"ci"}
    (build,) = ledger_rows(home, "build.finished", f"artifact:{digest}")
    assert (build["job"], build["status"], build["digest"]) == ("compile", "success", digest)
    tests = {b["suite"]: b for b in ledger_rows(home, "test.finished", f"artifact:{digest}")}
    counts = {suite: (b["passed"], b["failed"], b["status"]) for suite, b in tests.items()}
    assert counts == {
        "unit": (8, 0, "success"),  # tests/test_token.py
        "gas-snapshot": (5, 0, "success"),  # one per state-changing function
        "fork": (6, 0, "success"),  # the fork test's checks
    }
    (pipeline,) = ledger_rows(home, "pipeline.finished", f"run:{run_id}")
    assert pipeline["status"] == "success"


@pytest.mark.anvil
@pytest.mark.slow
def test_expensive_variant_fails_the_gas_job_naming_the_function(project: Path, home: Path) -> None:
    shutil.copy(project / "variants" / "Token.expensive.vy", project / "contracts" / "Token.vy")
    before = json.loads((project / ".gas-snapshot.json").read_text())["gas"]

    code, run_state = run_pipeline(project, home)
    assert code == 1, run_state
    statuses = {name: job["status"] for name, job in run_state["jobs"].items()}
    assert statuses == {
        "compile": "success",
        "unit": "success",
        "gas": "failure",
        "fork": "success",
    }
    opsledger = Path(sys.executable).with_name("opsledger")
    logs = subprocess.run(
        [str(opsledger), "--home", str(home), "pipeline", "logs", run_state["run"], "gas"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    failures = [line for line in logs.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1, logs
    assert failures[0].startswith(f"FAIL transfer: gas {before['transfer']} -> ")
    assert failures[0].endswith("exceeds the 5% tolerance")
    assert "gas check failed: transfer" in logs

    finished = {b["job"]: b for b in ledger_rows(home, "job.finished", f"run:{run_state['run']}")}
    assert (finished["gas"]["status"], finished["gas"]["exit_code"]) == ("failure", 1)
    digest = run_state["jobs"]["compile"]["artifacts"]["build/Token.json"]
    tests = {b["suite"]: b for b in ledger_rows(home, "test.finished", f"artifact:{digest}")}
    gas = tests["gas-snapshot"]
    assert (gas["passed"], gas["failed"], gas["status"]) == (4, 1, "failure")

    # Standalone: accepting the new cost is an explicit command; the check passes after it.
    updated = run(project, "ci/gas_check.py", "--update")
    assert updated.returncode == 0, explain(updated)
    after = json.loads((project / ".gas-snapshot.json").read_text())["gas"]
    assert after["transfer"] > before["transfer"]
    assert {k: v for k, v in after.items() if k != "transfer"} == {
        k: v for k, v in before.items() if k != "transfer"
    }
    again = run(project, "ci/gas_check.py")
    assert again.returncode == 0, explain(again)
    assert "gas check: 5 passed, 0 failed" in again.stdout
