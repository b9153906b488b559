"""Jobs against a real ledger home: real processes, real scanners, evidence on the ledger."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsledger.app import Home
from opsledger.client.base import LedgerClient, Signer
from opsledger.core import ConfigError, InvalidInput, PrivateKey, Subject
from opsledger.pipeline import (
    JobExecutor,
    JobOutput,
    JobRequest,
    JobSpec,
    LocalExecutor,
    get_parser,
    parse_bandit,
    parse_counts,
    parse_exit_code,
    parse_pip_audit,
)

from .scanners import FIXTURES, SAMPLE, bandit_argv, osv_server, pip_audit_argv

DIGEST = "sha256:" + hashlib.sha256(b"sample-service 1.4.0").hexdigest()
PY = sys.executable
QUIET_PYTEST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the venv's plugins slow start-up


@dataclass
class Ledger:
    client: LedgerClient
    ci: Signer
    trigger: str


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """A real home with a ``ci`` actor and a release request to hang the jobs on."""
    for name in ("OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR"):
        assert name not in os.environ, f"unset {name} to run these tests"
    home = Home(tmp_path_factory.mktemp("jobs") / "h")
    home.init()
    client = home.client()
    admin = home.signer()
    key = PrivateKey.generate()
    client.submit(
        admin.sign(
            "identity.key_added",
            Subject("actor", "ci"),
            {"actor": "ci", "public_key": key.public_key.b64, "roles": ["ci"], "kind": "service"},
        )
    )
    trigger = client.submit(
        admin.sign(
            "release.requested",
            Subject("artifact", DIGEST),
            {"service": "sample-service", "version": "1.4.0", "digest": DIGEST, "commits": []},
        )
    ).tx_id
    yield Ledger(client, Signer("ci", key, ledger=admin.ledger), trigger)
    client.close()


def executor(ledger: Ledger, workdir: Path = SAMPLE, **options: Any) -> LocalExecutor:
    return LocalExecutor(ledger.client, ledger.ci, workdir=workdir, **options)


def request(ledger: Ledger, spec: JobSpec, run: str | None = None) -> JobRequest:
    """Each test's run is its own: the node keeps one job.finished per job run."""
    run = run or f"run-{next(_RUNS)}"
    return JobRequest(spec=spec, digest=DIGEST, trigger=ledger.trigger, run=run)


_RUNS = itertools.count(1)


def on_ledger(ledger: Ledger, tx_id: str) -> dict[str, Any]:
    tx: dict[str, Any] = ledger.client.get_transaction(tx_id)["transaction"]
    assert tx["actor"] == "ci"
    assert tx["subject"] == {"kind": "artifact", "id": DIGEST}
    assert tx["refs"] == [ledger.trigger]
    return tx


def gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a reaper that is not us (PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(*pids: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


# -- LocalExecutor --


def test_passing_suite_records_test_finished(ledger: Ledger) -> None:
    spec = JobSpec(
        name="unit",
        command=[PY, "-m", "pytest", "-q", "tests"],
        env=QUIET_PYTEST,
        timeout=60,
        records="test.finished",
        parser="counts",
    )
    ex: JobExecutor = executor(ledger)  # LocalExecutor satisfies the protocol
    result = ex.run(request(ledger, spec, run="run-unit"))

    assert result.status == "success", result.output_tail
    assert result.exit_code == 0
    assert result.recorded == "test.finished"
    tx = on_ledger(ledger, result.tx_id)
    assert tx["type"] == "test.finished"
    body = tx["body"]
    assert body == result.evidence
    assert (body["suite"], body["passed"], body["failed"], body["status"]) == (
        "unit",
        3,
        0,
        "success",
    )
    assert body["digest"] == DIGEST
    assert body["job"] == "unit"
    assert body["run"] == "run-unit"
    assert body["exit_code"] == 0
    assert body["command"] == [PY, "-m", "pytest", "-q", "tests"]
    assert body["duration_ms"] == result.duration_ms
    # Nothing was cut, so the digest is that of the whole combined output.
    assert body["output_digest"] == "sha256:" + hashlib.sha256(result.output_tail).hexdigest()
    assert b"3 passed" in result.output_tail


def test_failing_suite_records_failure_with_counts(ledger: Ledger) -> None:
    script = "import sys; print('== 2 failed, 5 passed in 0.10s =='); sys.exit(1)"
    spec = JobSpec(
        name="regression",
        command=[PY, "-c", script],
        records="test.finished",
        parser="counts",
    )
    result = executor(ledger).run(request(ledger, spec))
    assert result.status == "failure"
    assert result.exit_code == 1
    body = on_ledger(ledger, result.tx_id)["body"]
    assert (body["passed"], body["failed"], body["status"]) == (5, 2, "failure")


def test_exit_code_job_records_job_finished(ledger: Ledger) -> None:
    spec = JobSpec(name="lint", command=[PY, "-c", "raise SystemExit(3)"])
    result = executor(ledger).run(request(ledger, spec))
    assert result.status == "failure"
    tx = on_ledger(ledger, result.tx_id)
    assert tx["type"] == "job.finished"
    assert tx["body"]["exit_code"] == 3
    assert tx["body"]["status"] == "failure"
    assert tx["body"]["outcome"] == "failure"


def test_timeout_kills_the_whole_process_group(ledger: Ledger, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    # The child ignores SIGTERM (so the SIGKILL escalation is needed) and has a
    # grandchild that would otherwise outlive it.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen(['sleep', '60'])\n"
        "with open(sys.argv[1], 'w') as f: f.write(f'{os.getpid()} {grandchild.pid}')\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    spec = JobSpec(
        name="hangs", command=[PY, "-c", script, str(pidfile)], timeout=2, parser="exit-code"
    )
    result = executor(ledger, kill_grace=0.2).run(request(ledger, spec))

    assert result.status == "timeout"
    assert result.exit_code is not None
    assert result.exit_code < 0  # killed by a signal
    assert b"started" in result.output_tail
    child, grandchild = map(int, pidfile.read_text().split())
    assert wait_gone(child, grandchild)
    tx = on_ledger(ledger, result.tx_id)
    # A timed-out job never becomes evidence with made-up numbers.
    assert tx["type"] == "job.finished"
    assert tx["body"]["outcome"] == "timeout"
    assert tx["body"]["status"] == "failure"
    assert "timed out" in tx["body"]["reason"]


def test_processes_left_behind_are_killed_when_the_job_ends(ledger: Ledger) -> None:
    spec = JobSpec(name="daemonizes", command=["sh", "-c", "sleep 60 & echo $!"])
    result = executor(ledger).run(request(ledger, spec))
    assert result.status == "success"
    assert wait_gone(int(result.output_tail.split()[0]))


def test_a_scan_timeout_is_never_recorded_as_a_clean_scan(ledger: Ledger) -> None:
    spec = JobSpec(
        name="scan",
        command=["sleep", "30"],
        timeout=0.5,
        records="scan.finished",
        parser="bandit",
    )
    result = executor(ledger, kill_grace=0.2).run(request(ledger, spec))
    assert result.status == "timeout"
    assert on_ledger(ledger, result.tx_id)["type"] == "job.finished"


def test_unreadable_scanner_output_is_an_error(ledger: Ledger) -> None:
    spec = JobSpec(
        name="scan",
        command=[PY, "-c", "print('this is not json')"],
        records="scan.finished",
        parser="bandit",
    )
    result = executor(ledger).run(request(ledger, spec))
    assert result.status == "error"
    assert result.reason is not None
    assert "not a JSON report" in result.reason
    tx = on_ledger(ledger, result.tx_id)
    assert tx["type"] == "job.finished"
    assert tx["body"]["outcome"] == "error"
    assert tx["body"]["reason"] == result.reason


def test_a_command_that_cannot_start_is_an_error(ledger: Ledger) -> None:
    spec = JobSpec(
        name="missing", command=["no-such-program-xyz"], records="test.finished", parser="counts"
    )
    result = executor(ledger).run(request(ledger, spec))
    assert result.status == "error"
    assert result.exit_code is None
    assert result.reason is not None
    assert "could not start" in result.reason
    body = on_ledger(ledger, result.tx_id)["body"]
    assert body["exit_code"] == -1
    assert body["output_digest"] == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_output_is_hashed_in_full_and_kept_bounded(ledger: Ledger) -> None:
    script = "import sys; sys.stdout.write('x' * 300000); sys.stderr.write('y' * 1000)"
    spec = JobSpec(name="chatty", command=[PY, "-c", script])
    result = executor(ledger, keep_bytes=4096).run(request(ledger, spec))
    assert result.status == "success"
    assert result.output_bytes == 301000
    assert len(result.output_tail) == 4096
    # One stream at a time here is deterministic: stdout is written before stderr starts.
    expected = hashlib.sha256(b"x" * 300000 + b"y" * 1000).hexdigest()
    assert result.output_digest == f"sha256:{expected}"


def test_shell_only_when_explicit_and_env_additions_apply(ledger: Ledger) -> None:
    spec = JobSpec(
        name="shelly",
        command=['echo "$GREETING" | tr a-z A-Z'],
        shell=True,
        env={"GREETING": "hi-there"},
    )
    result = executor(ledger).run(request(ledger, spec))
    assert result.output_tail == b"HI-THERE\n"
    body = on_ledger(ledger, result.tx_id)["body"]
    assert body["shell"] is True
    assert "hi-there" not in json.dumps(body)  # env values are not recorded


def test_the_signing_key_never_reaches_the_job(ledger: Ledger) -> None:
    base = {"PATH": os.environ["PATH"], "OPSLEDGER_KEY": "c2VjcmV0", "KEEP": "1"}
    spec = JobSpec(name="printenv", command=["env"])
    result = executor(ledger, base_env=base).run(request(ledger, spec))
    assert b"KEEP=1" in result.output_tail
    assert b"OPSLEDGER_KEY" not in result.output_tail


def test_real_bandit_finds_the_planted_issue(ledger: Ledger) -> None:
    spec = JobSpec(
        name="security-scan",
        command=bandit_argv(),
        timeout=120,
        records="scan.finished",
        parser="bandit",
    )
    result = executor(ledger).run(request(ledger, spec))
    assert result.status == "failure", result.reason
    tx = on_ledger(ledger, result.tx_id)
    assert tx["type"] == "scan.finished"
    body = tx["body"]
    assert body["scanner"] == "bandit"
    assert body["findings"]["high"] + body["findings"]["medium"] >= 1
    assert body["findings"]["critical"] == 0
    planted = [i for i in body["issues"] if i["test"] == "B602"]
    assert planted == [{"test": "B602", "severity": "high", "location": "inventory/ops.py:10"}]


def test_real_pip_audit_against_a_local_vulnerability_db(ledger: Ledger, tmp_path: Path) -> None:
    """The real pip-audit, pointed with its own --osv-url at a local server holding the
    advisories PyPI publishes (see scanners.py: the public databases are unreachable here)."""
    advisories = json.loads((FIXTURES / "osv_advisories.json").read_text())
    with osv_server(advisories) as url:
        spec = JobSpec(
            name="dependency-audit",
            command=pip_audit_argv(url, tmp_path / "cache"),
            timeout=120,
            records="scan.finished",
            parser="pip-audit",
        )
        result = executor(ledger).run(request(ledger, spec))
    assert result.status == "failure", result.reason
    body = on_ledger(ledger, result.tx_id)["body"]
    assert body["scanner"] == "pip-audit"
    assert body["findings"] == {"critical": 0, "high": 2, "medium": 0, "low": 0}
    assert {v["id"] for v in body["vulnerabilities"]} == {"PYSEC-2017-94", "PYSEC-2018-97"}


# -- specs and requests --


def test_spec_rules() -> None:
    with pytest.raises(ConfigError) as exc:
        JobSpec(name="x", command=["a", "b"], shell=True)
    assert exc.value.details["key"] == "command"
    with pytest.raises(ConfigError) as exc:
        JobSpec(name="x", command=["true"], records="scan.finished", parser="counts")
    assert exc.value.details["key"] == "parser"
    with pytest.raises(ConfigError) as exc:
        JobSpec(name="x", command=["true"], parser="nmap")
    assert exc.value.details["key"] == "parser"
    with pytest.raises(ConfigError) as exc:
        JobSpec(name="x", command=["true"], timeout=0)
    assert exc.value.details["key"] == "timeout"
    with pytest.raises(ConfigError):
        JobSpec(name="Has Spaces", command=["true"])
    with pytest.raises(ConfigError):
        JobSpec(name="x", command=[])


def test_spec_from_mapping_names_the_key() -> None:
    spec = JobSpec.from_mapping(
        {
            "name": "scan",
            "command": ["bandit", "-r", "."],
            "records": "scan.finished",
            "parser": "bandit",
            "timeout": 30,
        },
        where="jobs[0]",
    )
    assert spec.command == ("bandit", "-r", ".")
    with pytest.raises(ConfigError) as exc:
        JobSpec.from_mapping({"name": "t", "command": ["x"], "timeout": -1}, where="jobs[1]")
    assert exc.value.details["key"] == "jobs[1].timeout"
    with pytest.raises(ConfigError) as exc:
        JobSpec.from_mapping({"name": "t", "command": "rm -rf /tmp/x"}, where="jobs[2]")
    assert exc.value.details["key"] == "jobs[2].command"
    with pytest.raises(ConfigError) as exc:
        JobSpec.from_mapping({"name": "t", "command": ["x"], "retries": 3})
    assert exc.value.details["key"] == "job.retries"
    shell = JobSpec.from_mapping({"name": "t", "command": "make test", "shell": True})
    assert shell.command == ("make test",)


def test_request_rules() -> None:
    spec = JobSpec(name="x", command=["true"])
    with pytest.raises(InvalidInput) as exc:
        JobRequest(spec=spec, digest="md5:abc", trigger="a" * 64, run="r")
    assert exc.value.details["field"] == "digest"
    with pytest.raises(InvalidInput) as exc:
        JobRequest(spec=spec, digest=DIGEST, trigger="nope", run="r")
    assert exc.value.details["field"] == "trigger"


# -- parsers, on real tool output --


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_bandit_fixture() -> None:
    parsed = parse_bandit(JobOutput(exit_code=1, stdout=fixture("bandit.json"), stderr=b""))
    assert parsed.findings == {"critical": 0, "high": 1, "medium": 0, "low": 1}
    assert not parsed.ok
    assert {i["test"] for i in parsed.details["issues"]} == {"B602", "B404"}


def test_bandit_that_scanned_nothing_is_an_error() -> None:
    report = {
        "errors": [{"filename": "/nonexistent", "reason": "No such file or directory"}],
        "metrics": {"_totals": {"loc": 0}},
        "results": [],
    }
    with pytest.raises(InvalidInput, match="scanned no code: /nonexistent"):
        parse_bandit(JobOutput(exit_code=0, stdout=json.dumps(report).encode(), stderr=b""))


def test_bandit_crash_is_an_error_with_its_last_words() -> None:
    output = JobOutput(exit_code=2, stdout=b"", stderr=b"usage: ...\nbandit: error: bad -x\n")
    with pytest.raises(InvalidInput, match="exit status 2: bandit: error: bad -x"):
        parse_bandit(output)


def test_pip_audit_fixture_counts_each_vulnerability_once() -> None:
    parsed = parse_pip_audit(JobOutput(exit_code=1, stdout=fixture("pip_audit.json"), stderr=b""))
    # The real report lists 4 entries for pycrypto: two advisories, each twice.
    raw = json.loads(fixture("pip_audit.json"))
    assert sum(len(d.get("vulns", [])) for d in raw["dependencies"]) == 4
    assert parsed.findings == {"critical": 0, "high": 2, "medium": 0, "low": 0}
    by_id = {v["id"]: v for v in parsed.details["vulnerabilities"]}
    assert "CVE-2013-7459" in by_id["PYSEC-2017-94"]["aliases"]
    assert by_id["PYSEC-2018-97"]["package"] == "pycrypto"
    assert not parsed.ok


def test_pip_audit_that_could_not_reach_its_database_is_an_error() -> None:
    """The real output of pip-audit on this machine with its default service."""
    output = JobOutput(exit_code=0, stdout=fixture("pip_audit_unreachable.json"), stderr=b"")
    with pytest.raises(InvalidInput, match="audited nothing: pyyaml: Dependency not found"):
        parse_pip_audit(output)


def test_pip_audit_partial_skips_are_reported() -> None:
    report = {
        "dependencies": [
            {"name": "a", "version": "1", "vulns": []},
            {"name": "b", "skip_reason": "not on PyPI"},
        ],
        "fixes": [],
    }
    parsed = parse_pip_audit(JobOutput(0, json.dumps(report).encode(), b""))
    assert parsed.ok
    assert parsed.details["skipped"] == ["b: not on PyPI"]


def test_truncated_report_is_an_error() -> None:
    output = JobOutput(1, fixture("bandit.json")[-500:], b"", stdout_truncated=True)
    with pytest.raises(InvalidInput, match="larger than the output kept"):
        parse_bandit(output)


@pytest.mark.parametrize(
    ("text", "code", "passed", "failed", "ok"),
    [
        (b"...\n3 passed in 0.02s\n", 0, 3, 0, True),
        (b"\x1b[32m==== 10 passed, 2 skipped in 1.2s ====\x1b[0m\n", 0, 10, 0, True),
        (b"== 1 failed, 4 passed, 1 error in 2s ==\n", 1, 4, 2, False),
        (b"test says 9 passed\n== 2 passed in 0.1s ==\n", 0, 2, 0, True),
        (
            b"== 5 passed in 0.1s ==\nCoverage failure: total of 50 is less than 90\n",
            1,
            5,
            0,
            False,
        ),
    ],
)
def test_counts(text: bytes, code: int, passed: int, failed: int, ok: bool) -> None:
    parsed = parse_counts(JobOutput(exit_code=code, stdout=text, stderr=b""))
    assert (parsed.passed, parsed.failed, parsed.ok) == (passed, failed, ok)


def test_counts_without_a_summary_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="no test summary"):
        parse_counts(JobOutput(exit_code=5, stdout=b"no tests ran in 0.01s\n", stderr=b""))


def test_exit_code_parser_and_lookup() -> None:
    assert parse_exit_code(JobOutput(0, b"", b"")).ok
    assert not parse_exit_code(JobOutput(1, b"", b"")).ok
    assert get_parser("bandit") is parse_bandit
    with pytest.raises(ConfigError, match="unknown output parser"):
        get_parser("trivy")
