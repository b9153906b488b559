"""The engine over an in-memory ledger: release-gate and sla decisions and their reasons."""

from __future__ import annotations

from typing import Any

import pytest

from opsledger.contracts import builtin_source, evaluate, evidence_item, parse_contract
from opsledger.core import InvalidInput
from opsledger.testing.factories import digest

D = digest("shop-1.2.0")
OTHER = digest("shop-1.1.0")


class Ledger:
    """A list of evidence items standing in for the store."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.roles = {
            "alice": ["developer"],
            "ci": ["ci"],
            "bob": ["release-manager"],
            "carol": ["release-manager"],
            "dave": ["release-manager"],
            "mon": ["node"],
        }

    def add(
        self,
        tx_type: str,
        actor: str,
        body: dict[str, Any],
        *,
        subject: str = D,
        ts: str = "2026-11-21T12:00:00.000Z",
    ) -> dict[str, Any]:
        kind, _, ident = (
            ("artifact:" + subject).partition(":")
            if subject.startswith("sha256")
            else subject.partition(":")
        )
        item = evidence_item(
            tx_id=f"{len(self.items):064x}",
            leaf_index=len(self.items),
            tx={
                "type": tx_type,
                "actor": actor,
                "ts": ts,
                "subject": {"kind": kind, "id": ident},
                "body": body,
                "refs": [],
            },
            roles=self.roles[actor],
        )
        self.items.append(item)
        return item

    def find(
        self, *, tx_type: str, subject: tuple[str, str] | None, before_leaf: int, limit: int
    ) -> list[dict[str, Any]]:
        def matches(item: dict[str, Any]) -> bool:
            type_ok = item["type"] == tx_type or (
                tx_type.endswith(".*") and item["type"].startswith(tx_type[:-1])
            )
            subject_ok = (
                subject is None or (item["subject"]["kind"], item["subject"]["id"]) == subject
            )
            return type_ok and subject_ok and item["leaf"] < before_leaf

        return [i for i in reversed(self.items) if matches(i)][:limit]


GATE = parse_contract(builtin_source("release-gate"))
NOW = "2026-11-21T13:00:00.000Z"


def _history(ledger: Ledger, *, critical: int = 0) -> dict[str, Any]:
    ledger.add(
        "code.pushed",
        "alice",
        {
            "repo": "shop",
            "ref": "main",
            "commits": [{"id": "c0ffee", "author": "alice", "time": "2026-11-21T10:00:00Z"}],
        },
        subject="repo:shop",
    )
    ledger.add(
        "build.finished",
        "ci",
        {"artifact": "shop", "digest": D, "commit": "c0ffee", "status": "success"},
    )
    ledger.add(
        "test.finished",
        "ci",
        {"digest": D, "suite": "unit", "passed": 10, "failed": 0, "status": "success"},
    )
    ledger.add(
        "scan.finished",
        "ci",
        {
            "digest": D,
            "scanner": "pip-audit",
            "findings": {"critical": critical, "high": 0, "medium": 0, "low": 0},
        },
    )
    return ledger.add(
        "release.requested",
        "alice",
        {"service": "shop", "version": "1.2.0", "digest": D, "commits": ["c0ffee"]},
    )


def _reasons(verdict: Any) -> dict[str, tuple[str, str]]:
    return {r["name"]: (r["result"], r["reason"]) for r in verdict.body["requirements"]}


def test_gate_fails_on_a_critical_finding_naming_the_scan() -> None:
    ledger = Ledger()
    request = _history(ledger, critical=2)
    verdict = evaluate(GATE, request, source=ledger, now=NOW)
    assert verdict is not None
    reasons = _reasons(verdict)
    assert verdict.body["result"] == "fail"
    assert reasons["build"][0] == "pass" and reasons["tests"][0] == "pass"
    assert reasons["scan"] == (
        "fail",
        f"scan {ledger.items[3]['id']} by pip-audit found 2 critical"
        " and 0 high findings (allowed: 0 critical, 0 high)",
    )
    assert reasons["approvals"][0] == "fail"
    assert [r["evidence"] for r in verdict.body["requirements"] if r["name"] == "scan"] == [
        [ledger.items[3]["id"]]
    ]


def test_authors_approval_is_refused_and_two_managers_pass_the_gate() -> None:
    ledger = Ledger()
    ledger.roles["alice"] = ["developer", "release-manager"]
    request = _history(ledger)
    own = ledger.add("approval.granted", "alice", {"digest": D, "release": "shop-1.2.0"})
    verdict = evaluate(GATE, own, source=ledger, now=NOW)
    assert verdict is not None and verdict.body["request"] == request["id"]
    result, reason = _reasons(verdict)["approvals"]
    assert result == "fail"
    assert "refused: approval by alice (an author of the change cannot approve it)" in reason
    ledger.add("approval.granted", "bob", {"digest": D, "release": "shop-1.2.0"})
    last = ledger.add("approval.granted", "carol", {"digest": D, "release": "shop-1.2.0"})
    verdict = evaluate(GATE, last, source=ledger, now=NOW)
    assert verdict is not None
    assert verdict.body["result"] == "pass", _reasons(verdict)
    assert _reasons(verdict)["approvals"] == ("pass", "approved by bob, carol")


def test_digest_mismatch_and_missing_evidence_have_readable_reasons() -> None:
    ledger = Ledger()
    ledger.add(
        "build.finished",
        "ci",
        {"artifact": "shop", "digest": OTHER, "commit": "x", "status": "success"},
        subject=OTHER,
    )
    request = ledger.add(
        "release.requested",
        "alice",
        {"service": "shop", "version": "1.2.0", "digest": D, "commits": []},
    )
    verdict = evaluate(GATE, request, source=ledger, now=NOW)
    assert verdict is not None
    reasons = _reasons(verdict)
    assert reasons["build"] == ("fail", f"no successful build.finished for {D}")
    assert reasons["tests"] == ("fail", f"no test.finished for {D}")
    assert reasons["scan"] == ("fail", f"no scan.finished for {D}")


def test_old_approvals_and_other_roles_do_not_count() -> None:
    ledger = Ledger()
    _history(ledger)
    ledger.add(
        "approval.granted", "bob", {"digest": D, "release": "r"}, ts="2026-11-01T00:00:00.000Z"
    )
    last = ledger.add("approval.granted", "carol", {"digest": D, "release": "r"})
    verdict = evaluate(GATE, last, source=ledger, now=NOW)
    assert verdict is not None
    assert _reasons(verdict)["approvals"][0] == "fail"


def test_evaluation_is_deterministic() -> None:
    ledger = Ledger()
    request = _history(ledger, critical=1)
    first = evaluate(GATE, request, source=ledger, now=NOW)
    for _ in range(5):
        again = evaluate(GATE, request, source=ledger, now=NOW)
        assert again is not None and first is not None and again.body == first.body


def test_no_verdict_without_a_request() -> None:
    ledger = Ledger()
    build = ledger.add(
        "build.finished",
        "ci",
        {"artifact": "shop", "digest": D, "commit": "x", "status": "success"},
    )
    assert evaluate(GATE, build, source=ledger, now=NOW) is None


def test_sla_violation_is_recorded_with_measured_figures() -> None:
    sla = parse_contract(builtin_source("sla"))
    ledger = Ledger()
    report = ledger.add(
        "slo.reported",
        "mon",
        {
            "service": "rpc",
            "window_start": "2026-11-01T00:00:00.000Z",
            "window_end": "2026-12-01T00:00:00.000Z",
            "total": 100000,
            "good": 99000,
            "latency_p95_ms": 120,
        },
        subject="service:rpc",
    )
    verdict = evaluate(sla, report, source=ledger, now=NOW)
    assert verdict is not None and verdict.body["result"] == "fail"
    assert verdict.records == (
        (
            "sla.violation",
            {
                "contract": "sla",
                "objective": "availability",
                "period": "2026-11-01T00:00:00.000Z/2026-12-01T00:00:00.000Z",
                "measured": "99%",
                "target": "99.9%",
                "service": "rpc",
                "provider": "platform-team",
                "consumer": "dapp-team",
            },
        ),
    )
    other = ledger.add(
        "slo.reported",
        "mon",
        {
            "service": "web",
            "window_start": "2026-11-01T00:00:00.000Z",
            "window_end": "2026-12-01T00:00:00.000Z",
            "total": 1,
            "good": 0,
        },
        subject="service:web",
    )
    assert evaluate(sla, other, source=ledger, now=NOW) is None


HEAD = "contract: x\nversion: 1\ntriggers: [note]\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            HEAD + "requirements:\n  - name: a\n    check: 'trigger.body.text =='\n",
            "line 6",
        ),
        (
            HEAD + "requirements:\n  - name: a\n    check: 'size(trigger) >= \"2\"'\n",
            "no matching overload",
        ),
        (
            HEAD + "requirements:\n  - name: a\n    check: 'frobnicate(trigger)'\n",
            "undeclared reference to 'frobnicate'",
        ),
        (
            "contract: x\nversion: 1\ntriggers: [nope.type]\nrequirements: []\n",
            "unknown transaction type",
        ),
        (
            HEAD + "bogus: 1\nrequirements:\n  - {name: a, check: 'true'}\n",
            "line 4: unknown key 'bogus'",
        ),
        (
            HEAD + "requirements:\n  - {name: a, check: '1 + 1'}\n",
            "must be a bool",
        ),
        ("contract: x\nversion: 0\n", "version"),
        ("contract: [oops\n", "not valid YAML"),
    ],
)
def test_bad_contracts_are_refused_with_line_and_reason(source: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_contract(source)
    assert message in str(info.value)


def test_unknown_authors_fail_closed() -> None:
    """Segregation of duties cannot be checked for a commit nobody pushed: refuse."""
    ledger = Ledger()
    _history(ledger)
    request = ledger.add(
        "release.requested",
        "alice",
        {"service": "shop", "version": "1.2.1", "digest": D, "commits": ["c0ffee", "deadbee"]},
    )
    verdict = evaluate(GATE, request, source=ledger, now=NOW)
    assert verdict is not None
    assert _reasons(verdict)["authors"] == (
        "fail",
        "no code.pushed found for commit(s) deadbee among the newest 1000 pushes:"
        " the authors of the change cannot be established",
    )


def test_params_must_be_json_values() -> None:
    source = HEAD + "params: {since: 2026-11-01}\nrequirements:\n  - {name: a, check: 'true'}\n"
    with pytest.raises(InvalidInput, match="params must hold JSON values"):
        parse_contract(source)
