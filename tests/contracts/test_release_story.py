"""The release gate end to end through the CLI, as a team would live it.

build → tests pass → scan finds a critical → release requested → gate fails naming the
scan → a local webhook receiver gets the notification → fix → rescan clean → the author's
approval is refused → two release managers approve → gate passes → verdict recorded →
verify re-executes the contract and agrees; then a tampered verdict in a copy of the
ledger makes verify fail.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opsledger.cli import app
from opsledger.testing.factories import digest
from opsledger.testing.webhook import webhook_receiver

D = digest("shop-3.1.0")
COMMIT = "9f1c2e7"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_receiver() as hook:
        yield hook.url, hook.received


def cli(home: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, (
        f"{args}: exit {result.exit_code}\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def record(
    home: Path, actor: str, tx_type: str, *fields: str, subject: str = f"artifact:{D}"
) -> str:
    out = cli(
        home,
        "record",
        tx_type,
        "--subject",
        subject,
        "--as",
        actor,
        "--json",
        *(arg for f in fields for arg in ("--field", f)),
    )
    return str(json.loads(out)["tx_id"])


def latest_verdict(home: Path) -> dict[str, Any]:
    out = cli(home, "contract", "verdicts", "--subject", f"artifact:{D}", "--limit", "1", "--json")
    return dict(json.loads(out.splitlines()[0]))


def requirement(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in verdict["requirements"] if r["name"] == name)


@pytest.mark.slow
def test_release_story(tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = receiver
    home = tmp_path / "home"
    cli(home, "init")
    config = home / "opsledger.yaml"
    config.write_text(
        config.read_text() + f"notify:\n  targets:\n    - {{kind: webhook, url: '{url}'}}\n"
    )
    cli(home, "keys", "new", "alice", "--role", "developer", "--role", "release-manager")
    cli(home, "keys", "new", "ci", "--role", "ci", "--kind", "service")
    cli(home, "keys", "new", "bob", "--role", "release-manager")
    cli(home, "keys", "new", "carol", "--role", "release-manager")
    cli(
        home,
        "record",
        "code.pushed",
        "--subject",
        "repo:shop",
        "--as",
        "alice",
        "--body",
        json.dumps(
            {
                "repo": "shop",
                "ref": "refs/heads/main",
                "commits": [{"id": COMMIT, "author": "alice", "time": "2026-11-21T09:00:00Z"}],
            }
        ),
    )

    record(
        home,
        "ci",
        "build.finished",
        "artifact=shop",
        f"digest={D}",
        f"commit={COMMIT}",
        "status=success",
    )
    record(
        home,
        "ci",
        "test.finished",
        f"digest={D}",
        "suite=unit",
        "passed=212",
        "failed=0",
        "status=success",
    )
    scan = record(
        home,
        "ci",
        "scan.finished",
        f"digest={D}",
        "scanner=pip-audit",
        "findings.critical=1",
        "findings.high=0",
        "findings.medium=0",
        "findings.low=0",
    )
    record(
        home,
        "alice",
        "release.requested",
        "service=shop",
        "version=3.1.0",
        f"digest={D}",
        f'commits=["{COMMIT}"]',
    )

    verdict = latest_verdict(home)
    assert verdict["result"] == "fail"
    assert requirement(verdict, "scan")["reason"] == (
        f"scan {scan} by pip-audit found 1 critical and 0 high findings"
        " (allowed: 0 critical, 0 high)"
    )
    assert requirement(verdict, "scan")["evidence"] == [scan]
    assert received, "the webhook receiver got no notification"
    note = received[-1]
    assert note["event"] == "contract.verdict.failed"
    assert scan in note["text"] and note["fields"]["subject"] == f"artifact:{D}"

    clean = record(
        home,
        "ci",
        "scan.finished",
        f"digest={D}",
        "scanner=pip-audit",
        "findings.critical=0",
        "findings.high=0",
        "findings.medium=0",
        "findings.low=0",
    )
    assert requirement(latest_verdict(home), "scan") == {
        "name": "scan",
        "result": "pass",
        "reason": "",
        "evidence": [clean],
    }

    record(home, "alice", "approval.granted", f"digest={D}", "release=shop-3.1.0")
    refused = requirement(latest_verdict(home), "approvals")
    assert refused["result"] == "fail"
    assert (
        "refused: approval by alice (an author of the change cannot approve it)"
        in refused["reason"]
    )

    bob = record(home, "bob", "approval.granted", f"digest={D}", "release=shop-3.1.0")
    carol = record(home, "carol", "approval.granted", f"digest={D}", "release=shop-3.1.0")
    final = latest_verdict(home)
    assert final["result"] == "pass"
    assert requirement(final, "approvals") == {
        "name": "approvals",
        "result": "pass",
        "reason": "approved by bob, carol",
        "evidence": [bob, carol],
    }

    assert "ok: the ledger verifies" in cli(home, "verify")

    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    (copy / "node.lock").unlink(missing_ok=True)
    db = sqlite3.connect(copy / "ledger.db")
    (leaf,) = db.execute("SELECT leaf FROM txs WHERE tx_id = ?", (final["tx_id"],)).fetchone()
    db.execute(
        "UPDATE txs SET leaf = ? WHERE tx_id = ?",
        (bytes(leaf).replace(b'"result":"pass"', b'"result":"fail"', 1), final["tx_id"]),
    )
    db.commit()
    db.close()
    result = CliRunner().invoke(app, ["--home", str(copy), "verify"])
    assert result.exit_code == 1
    assert "verification failed" in result.stderr
