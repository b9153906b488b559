"""Output parsers: turn what a job printed into findings (scanners) or counts (test runners).

A parser is a one-method protocol, ``(JobOutput) -> Parsed``, looked up by name from a job
spec. Parsers are pure: they get bytes and an exit status and return a verdict or raise
``InvalidInput`` with a reason the executor records as the job's ``error``; they never crash
the executor and never touch the ledger.

Two rules hold for every scanner parser, because a scan that looks clean is what lets a
release through:

- A scanner that examined nothing (every dependency skipped, no line of code read) is an
  error, never "0 findings". Partly skipped input is reported in ``details`` (``skipped``) so
  a contract can insist on it being empty.
- An exit status the tool documents as "it broke" is an error even if stdout parsed.

Severity mapping:

- ``bandit``: ``issue_severity`` HIGH/MEDIUM/LOW map to high/medium/low (UNDEFINED counts
  as low). bandit has no "critical", so ``critical`` is always 0.
- ``pip-audit``: its JSON carries no severity (neither do most PyPI/OSV advisories it
  reads), so every known vulnerability counts as ``high``. Reason: a gate that blocks on
  ``high`` then blocks on any known vulnerability of a dependency, which is the safe
  default; an advisory that is accepted on purpose is skipped with pip-audit's own
  ``--ignore-vuln ID``, which leaves a trace in the recorded command. ``critical`` is
  reserved for scanners that can actually say it. A severity map was judged overkill.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from opsledger.core import ConfigError, InvalidInput

__all__ = [
    "COUNT_PARSERS",
    "PARSERS",
    "SCAN_PARSERS",
    "JobOutput",
    "OutputParser",
    "Parsed",
    "get_parser",
    "parse_bandit",
    "parse_counts",
    "parse_exit_code",
    "parse_pip_audit",
]

MAX_LISTED = 100
"""At most this many issues/vulnerabilities are listed in a body: context, not a report."""


@dataclass(frozen=True, slots=True)
class JobOutput:
    """What a finished process left behind. ``stdout``/``stderr`` are the kept tails;
    ``*_truncated`` say that the start was dropped (a JSON report cut this way is an error)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parser's verdict.

    ``ok``: the job passed (tests all passed; the scan found nothing at any level).
    ``findings``: ``{critical, high, medium, low}`` for scanners, else None.
    ``passed``/``failed``: test counts for test runners, else None.
    ``details``: extra context merged into the evidence body (never a required field).
    """

    ok: bool
    findings: dict[str, int] | None = None
    passed: int | None = None
    failed: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


class OutputParser(Protocol):
    def __call__(self, output: JobOutput) -> Parsed:
        """Read one job's output; raise ``InvalidInput`` saying why it cannot be read."""


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _json_report(tool: str, output: JobOutput) -> dict[str, Any]:
    if output.stdout_truncated:
        raise InvalidInput(
            f"{tool}: the JSON report is larger than the output kept; it cannot be parsed"
        )
    text = output.stdout.decode("utf-8", "replace").strip()
    if not text:
        hint = _last_line(output.stderr)
        raise InvalidInput(
            f"{tool} wrote no JSON report (exit {output.exit_code})" + (f": {hint}" if hint else "")
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{tool}: stdout is not a JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{tool}: the JSON report is not an object")
    return data


def _check_exit(tool: str, output: JobOutput, allowed: tuple[int, ...]) -> None:
    if output.exit_code not in allowed:
        hint = _last_line(output.stderr)
        raise InvalidInput(
            f"{tool} failed with exit status {output.exit_code}" + (f": {hint}" if hint else "")
        )


def _empty_findings() -> dict[str, int]:
    return {"critical": 0, "high": 0, "medium": 0, "low": 0}


def parse_bandit(output: JobOutput) -> Parsed:
    """``bandit -f json``: exit 0 (no issues) or 1 (issues found); anything else broke."""
    _check_exit("bandit", output, (0, 1))
    data = _json_report("bandit", output)
    results, errors = data.get("results"), data.get("errors", [])
    if not isinstance(results, list) or not isinstance(errors, list):
        raise InvalidInput("bandit: the report has no results/errors lists")
    findings = _empty_findings()
    issues: list[dict[str, Any]] = []
    for item in results:
        if not isinstance(item, dict):
            raise InvalidInput("bandit: a result is not an object")
        severity = str(item.get("issue_severity", "")).lower()
        level = severity if severity in ("high", "medium", "low") else "low"
        findings[level] += 1
        if len(issues) < MAX_LISTED:
            issues.append(
                {
                    "test": str(item.get("test_id", "")),
                    "severity": level,
                    "location": f"{item.get('filename', '?')}:{item.get('line_number', '?')}",
                }
            )
    skipped = [
        f"{e.get('filename', '?')}: {e.get('reason', '?')}" for e in errors if isinstance(e, dict)
    ]
    metrics = data.get("metrics")
    totals = metrics.get("_totals") if isinstance(metrics, dict) else None
    loc = totals.get("loc") if isinstance(totals, dict) else None
    if not results and loc == 0:
        reason = "; ".join(skipped[:3]) or "no Python code found"
        raise InvalidInput(f"bandit scanned no code: {reason}")
    details: dict[str, Any] = {"issues": issues}
    if skipped:
        details["skipped"] = skipped[:MAX_LISTED]
    return Parsed(ok=not results, findings=findings, details=details)


def _unique_vulns(package: str, entries: list[Any]) -> list[dict[str, Any]]:
    """One entry per vulnerability: entries whose ``{id, *aliases}`` overlap are one.

    pip-audit can list one advisory twice: it collapses aliases only after renaming each
    record to its preferred (PYSEC) id, so a GHSA record aliased to a PYSEC one appears
    again under that PYSEC id (``fixtures/pip_audit.json`` is a real run showing it).
    """
    groups: list[dict[str, Any]] = []
    for vuln in entries:
        if not isinstance(vuln, dict) or not isinstance(vuln.get("id"), str):
            raise InvalidInput(f"pip-audit: a vulnerability of {package} has no id")
        aliases = vuln.get("aliases", [])
        fixes = vuln.get("fix_versions", [])
        if not isinstance(aliases, list) or not isinstance(fixes, list):
            raise InvalidInput(f"pip-audit: {vuln['id']} has malformed aliases or fix_versions")
        names = {vuln["id"], *map(str, aliases)}
        for group in groups:
            if group["names"] & names:
                group["names"] |= names
                group["fix_versions"] |= set(map(str, fixes))
                break
        else:
            groups.append({"id": vuln["id"], "names": names, "fix_versions": set(map(str, fixes))})
    return [
        {
            "id": group["id"],
            "aliases": sorted(group["names"] - {group["id"]}),
            "fix_versions": sorted(group["fix_versions"]),
        }
        for group in groups
    ]


def parse_pip_audit(output: JobOutput) -> Parsed:
    """``pip-audit -f json``: every vulnerability counts as ``high`` (see module docstring),
    once per package however many ids pip-audit lists it under.

    Exit 0 means no vulnerability, 1 means some were found *or* the audit failed; the
    difference is whether a JSON report came out.
    """
    _check_exit("pip-audit", output, (0, 1))
    data = _json_report("pip-audit", output)
    deps = data.get("dependencies")
    if not isinstance(deps, list):
        raise InvalidInput("pip-audit: the report has no dependencies list")
    findings = _empty_findings()
    vulns: list[dict[str, Any]] = []
    skipped: list[str] = []
    audited = 0
    for dep in deps:
        if not isinstance(dep, dict) or "name" not in dep:
            raise InvalidInput("pip-audit: a dependency entry has no name")
        if "skip_reason" in dep:
            skipped.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        audited += 1
        dep_vulns = dep.get("vulns", [])
        if not isinstance(dep_vulns, list):
            raise InvalidInput(f"pip-audit: vulns of {dep['name']} is not a list")
        for vuln in _unique_vulns(str(dep["name"]), dep_vulns):
            findings["high"] += 1
            if len(vulns) < MAX_LISTED:
                version = str(dep.get("version", ""))
                vulns.append({"package": str(dep["name"]), "version": version, **vuln})
    if audited == 0:
        reason = "; ".join(skipped[:3]) or "no dependencies listed"
        raise InvalidInput(f"pip-audit audited nothing: {reason}")
    details: dict[str, Any] = {"vulnerabilities": vulns}
    if skipped:
        details["skipped"] = skipped[:MAX_LISTED]
    return Parsed(ok=findings["high"] == 0, findings=findings, details=details)


_ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")


def _last_summary(text: str) -> dict[str, int] | None:
    for line in reversed(text.splitlines()):
        counts: dict[str, int] = {}
        for number, word in _COUNT.findall(line):
            key = "error" if word.startswith("error") else word
            counts[key] = counts.get(key, 0) + int(number)
        if counts.keys() & {"passed", "failed", "error"}:
            return counts
    return None


def parse_counts(output: JobOutput) -> Parsed:
    """pytest's summary line (``3 passed, 1 failed in 0.12s``), the last one printed.

    Errors (collection or fixture errors) count as failed. The job is ok only with a zero
    exit status and no failures: a summary claiming success under a non-zero exit (say a
    coverage gate) is a failure.
    """
    for stream in (output.stdout, output.stderr):  # pytest prints its summary on stdout
        counts = _last_summary(_ANSI.sub(b"", stream).decode("utf-8", "replace"))
        if counts is not None:
            failed = counts.get("failed", 0) + counts.get("error", 0)
            details = {"skipped": counts["skipped"]} if counts.get("skipped") else {}
            return Parsed(
                ok=output.exit_code == 0 and failed == 0,
                passed=counts.get("passed", 0),
                failed=failed,
                details=details,
            )
    hint = _last_line(output.stdout) or _last_line(output.stderr)
    raise InvalidInput(
        f"no test summary (N passed / N failed) in the output (exit {output.exit_code})"
        + (f": {hint}" if hint else "")
    )


def parse_exit_code(output: JobOutput) -> Parsed:
    """No findings and no counts: the exit status alone says pass or fail."""
    return Parsed(ok=output.exit_code == 0)


PARSERS: Mapping[str, OutputParser] = MappingProxyType(
    {
        "bandit": parse_bandit,
        "pip-audit": parse_pip_audit,
        "counts": parse_counts,
        "exit-code": parse_exit_code,
    }
)
"""Parsers by the name a job spec uses (read-only)."""

SCAN_PARSERS = frozenset({"bandit", "pip-audit"})
"""Parsers that produce findings: the only ones a ``scan.finished`` job may use."""

COUNT_PARSERS = frozenset({"counts", "exit-code"})
"""Parsers a ``test.finished`` job may use (``exit-code`` records 0 passed / 0 failed)."""


def get_parser(name: str) -> OutputParser:
    try:
        return PARSERS[name]
    except KeyError:
        known = ", ".join(sorted(PARSERS))
        message = f"unknown output parser {name!r} (known: {known})"
        raise ConfigError(message, key="parser") from None
