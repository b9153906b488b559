"""Gas snapshot check: measure each state-changing function's gas from real transactions'
receipts on a fresh anvil and compare with ``.gas-snapshot.json``.

    python ci/gas_check.py [--tolerance 5] [--report gas-report.json]
    python ci/gas_check.py --update        # accept the new figures (an explicit step)

The tolerance comes from ``--tolerance``, else ``$GAS_TOLERANCE_PERCENT``, else 5.
Exit 0 when every function is within tolerance; 1 when a function's gas grew by more than
``--tolerance`` percent (each such function is named), a function has no figure in the
snapshot, or a snapshot entry has no measured function; 2 on a usage or setup error.
A decrease passes (and is reported): run ``--update`` to lock the gain in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chain import (
    DEFAULT_CONTRACT,
    PROJECT,
    Artifact,
    connect,
    deploy,
    die,
    env_url,
    load_artifact,
    node,
)
from gas_scenarios import STEPS
from web3 import Web3

SNAPSHOT = PROJECT / ".gas-snapshot.json"
DEFAULT_TOLERANCE = 5.0
TOLERANCE_ENV = "GAS_TOLERANCE_PERCENT"
"""The pipeline sets the tolerance in the job's ``env``; ``--tolerance`` overrides it."""


def default_tolerance() -> float:
    raw = os.environ.get(TOLERANCE_ENV, "")
    if not raw:
        return DEFAULT_TOLERANCE
    try:
        return float(raw)
    except ValueError:
        die(f"{TOLERANCE_ENV}={raw!r} is not a number")


@dataclass(frozen=True)
class Finding:
    function: str
    snapshot: int | None
    measured: int | None
    change_percent: float | None
    verdict: str
    """``ok``, ``cheaper``, ``regression``, ``new`` (not in the snapshot), ``missing``
    (in the snapshot, not measured) or ``no-scenario`` (in the ABI, not measured)."""

    @property
    def failed(self) -> bool:
        return self.verdict in ("regression", "new", "missing", "no-scenario")

    def line(self, tolerance: float) -> str:
        if self.verdict == "regression":
            return (
                f"FAIL {self.function}: gas {self.snapshot} -> {self.measured} "
                f"(+{self.change_percent:.2f}%) exceeds the {tolerance:g}% tolerance"
            )
        if self.verdict == "new":
            return (
                f"FAIL {self.function}: measured {self.measured} gas but it has no snapshot "
                "entry (run gas_check.py --update)"
            )
        if self.verdict == "missing":
            return f"FAIL {self.function}: in the snapshot but no longer measured"
        if self.verdict == "no-scenario":
            return (
                f"FAIL {self.function}: state-changing function with no measured step in "
                "ci/gas_scenarios.py"
            )
        sign = "+" if (self.change_percent or 0) >= 0 else ""
        return (
            f"ok   {self.function}: gas {self.snapshot} -> {self.measured} "
            f"({sign}{self.change_percent:.2f}%)"
        )


def measure(w3: Web3, artifact: Artifact) -> dict[str, int]:
    """Run the scenario on the node behind ``w3``; ``{function: gasUsed}``."""
    accounts = list(w3.eth.accounts)
    token = deploy(w3, artifact, sender=accounts[0])
    gas: dict[str, int] = {}
    for step in STEPS:
        call = getattr(token.functions, step.function)(*step.args(accounts))
        tx_hash = call.transact({"from": accounts[step.sender]})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        if receipt["status"] != 1:
            die(f"scenario step {step.function} reverted")
        if step.measure:
            gas[step.function] = int(receipt["gasUsed"])
    return gas


def compare(
    snapshot: dict[str, int], measured: dict[str, int], abi_functions: list[str], tolerance: float
) -> list[Finding]:
    findings: list[Finding] = []
    for function in sorted(set(snapshot) | set(measured) | set(abi_functions)):
        before, now = snapshot.get(function), measured.get(function)
        if now is None and function in abi_functions:
            findings.append(Finding(function, before, None, None, "no-scenario"))
        elif now is None:
            findings.append(Finding(function, before, None, None, "missing"))
        elif before is None:
            findings.append(Finding(function, None, now, None, "new"))
        else:
            change = (now - before) * 100.0 / before
            verdict = "regression" if change > tolerance else "cheaper" if now < before else "ok"
            findings.append(Finding(function, before, now, change, verdict))
    return findings


def read_snapshot(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        die(f"{path} does not exist: run `python ci/gas_check.py --update` to create it")
    except json.JSONDecodeError as exc:
        die(f"{path}:{exc.lineno}: not JSON: {exc.msg}")
    gas = data.get("gas") if isinstance(data, dict) else None
    # bool is an int subclass in Python: `true` must not pass as a gas figure.
    if not isinstance(gas, dict) or not all(
        isinstance(k, str) and type(v) is int and v > 0 for k, v in gas.items()
    ):
        die(f'{path}: expected {{"gas": {{function: positive integer}}}}')
    snapshot: dict[str, Any] = data
    return snapshot


def write_snapshot(path: Path, artifact: Artifact, measured: dict[str, int]) -> None:
    data = {
        "contract": artifact.source,
        "compiler": artifact.compiler,
        "source_sha256": artifact.source_sha256,
        "gas": dict(sorted(measured.items())),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contract", default=DEFAULT_CONTRACT, help="contract name (Token)")
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT, help="snapshot file")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=default_tolerance(),
        help=f"allowed growth per function, percent (default ${TOLERANCE_ENV} or "
        f"{DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("--update", action="store_true", help="write the measured figures")
    parser.add_argument("--report", type=Path, help="also write the findings as JSON here")
    parser.add_argument(
        "--rpc-url", default=env_url("CONTRACT_CI_RPC_URL"), help="node (default: fresh anvil)"
    )
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance must be >= 0")

    artifact = load_artifact(args.contract)
    unmeasured = sorted(set(artifact.state_changing()) - {s.function for s in STEPS if s.measure})
    if args.update and unmeasured:
        die(f"no measured step in ci/gas_scenarios.py for: {', '.join(unmeasured)}")
    snapshot = None if args.update else read_snapshot(args.snapshot)
    with node(args.rpc_url) as url:
        measured = measure(connect(url), artifact)

    if snapshot is None:
        write_snapshot(args.snapshot, artifact, measured)
        for function, gas in sorted(measured.items()):
            print(f"snapshot {function}: {gas}")
        print(f"updated {args.snapshot}")
        return 0

    findings = compare(snapshot["gas"], measured, artifact.state_changing(), args.tolerance)
    for finding in findings:
        print(finding.line(args.tolerance))
    failed = [f.function for f in findings if f.failed]
    if args.report:
        report = {
            "contract": artifact.source,
            "tolerance_percent": args.tolerance,
            "failed": failed,
            "findings": [asdict(f) for f in findings],
        }
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    # A pytest-shaped summary: the pipeline's `counts` parser records it as test evidence.
    print(
        f"gas check: {len(findings) - len(failed)} passed, {len(failed)} failed "
        f"(tolerance {args.tolerance:g}%)"
    )
    if failed:
        print(f"gas check failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
