"""``opsledger audit report``: every section of a report over a real ledger history, its
proofs checked offline, period filtering, Markdown tables and the bundle it writes.

The history is built once per module through a writable home, so the node's contract
runner records the release-gate verdicts itself (a hand-made verdict would not survive
``verify``, which re-executes them). Three phases are separated by two boundary times:
before the period, in it, and after it.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from typer.testing import CliRunner, Result

from opsledger.app import Home
from opsledger.app.audit import (
    PAGE,
    STILL_OPEN,
    AuditReport,
    build_report,
    with_bundle,
)
from opsledger.app.audit_render import render_markdown, to_json
from opsledger.app.contracts import deploy_contract
from opsledger.cli import app
from opsledger.client.base import LedgerClient, Signer
from opsledger.client.local import LocalClient
from opsledger.contracts import builtin_source, parse_contract
from opsledger.core import (
    PrivateKey,
    ReplayRejected,
    b64decode,
    format_ts,
    leaf_hash,
    open_checkpoint,
    parse_subject,
    sha256_hex,
    verify_inclusion,
)
from opsledger.testing.factories import digest

ENV_VARS = ("OPSLEDGER_HOME", "OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR")
ACTORS = {
    "dev": "developer",
    "ci": "ci",
    "rm1": "release-manager",
    "rm2": "release-manager",
    "ops": "operator",
}


@dataclass
class History:
    """What was recorded: tx ids and timestamps by label, the period's boundaries."""

    path: Path
    genesis: str
    ids: dict[str, str] = field(default_factory=dict)
    ts: dict[str, str] = field(default_factory=dict)
    actor: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # release -> view
    contracts: dict[str, str] = field(default_factory=dict)  # "name@version" -> tx id
    since: str = ""
    until: str = ""

    def ref(self, label: str) -> dict[str, Any]:
        return {
            "tx_id": self.ids[label],
            "type": self.type[label],
            "actor": self.actor[label],
            "time": self.ts[label],
        }

    type: dict[str, str] = field(default_factory=dict)


class Recorder:
    def __init__(self, home: Home, client: LedgerClient, history: History) -> None:
        self.home = home
        self.client = client
        self.h = history
        self.signers: dict[str, Signer] = {"admin": home.signer()}

    def add_actor(self, name: str, role: str) -> None:
        key = PrivateKey.generate()
        self.home.write_key(name, key)
        body: dict[str, Any] = {
            "actor": name,
            "public_key": key.public_key.b64,
            "roles": [role],
            "kind": "person",
        }
        self.client.submit(
            self.signers["admin"].sign("identity.key_added", parse_subject(f"actor:{name}"), body)
        )
        self.signers[name] = Signer(name, key, ledger=self.signers["admin"].ledger)

    def rec(
        self,
        label: str,
        actor: str,
        tx_type: str,
        subject: str,
        body: dict[str, Any],
        refs: tuple[str, ...] = (),
    ) -> str:
        signer = self.signers.setdefault(actor, self.home.signer(actor))
        stx = signer.sign(tx_type, parse_subject(subject), body, refs)
        try:
            receipt = self.client.submit(stx)
        except ReplayRejected:  # the node's contract runner signs as the node too
            signer.bump_past(int(self.client.actor(actor)["last_nonce"]))
            stx = signer.sign(tx_type, parse_subject(subject), body, refs)
            receipt = self.client.submit(stx)
        self.h.ids[label], self.h.ts[label] = receipt.tx_id, stx.tx.ts
        self.h.actor[label], self.h.type[label] = actor, tx_type
        return receipt.tx_id

    def release(
        self, name: str, service: str, version: str, evidence: set[str], *, verdict: bool = True
    ) -> None:
        """Evidence first (so only the request triggers the gate), then the request."""
        d = self.h.digests[name] = digest(f"{service}-{version}")
        subject = f"artifact:{d}"
        body: dict[str, Any]
        if "build" in evidence:
            body = {"artifact": service, "digest": d, "commit": f"c-{name}", "status": "success"}
            self.rec(f"build_{name}", "ci", "build.finished", subject, body)
        if "test" in evidence:
            body = {"digest": d, "suite": "unit", "passed": 10, "failed": 0, "status": "success"}
            self.rec(f"test_{name}", "ci", "test.finished", subject, body)
        if "scan" in evidence:
            findings = {"critical": 0, "high": 0, "medium": 1, "low": 2}
            body = {"digest": d, "scanner": "pip-audit", "findings": findings}
            self.rec(f"scan_{name}", "ci", "scan.finished", subject, body)
        if "approvals" in evidence:
            for rm in ("rm1", "rm2"):
                body = {"digest": d, "release": f"{service}-{version}"}
                self.rec(f"{rm}_{name}", rm, "approval.granted", subject, body)
        body = {"service": service, "version": version, "digest": d, "commits": []}
        request = self.rec(name, "dev", "release.requested", subject, body)
        if verdict:
            view = self.wait_for_verdict(request, d)
            self.h.verdicts[name] = view
            self.h.ids[f"v{name}"] = view["tx_id"]
            self.h.ts[f"v{name}"] = view["transaction"]["ts"]

    def wait_for_verdict(self, trigger: str, d: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            views = self.client.list_transactions(
                {"type": "contract.verdict", "subject": f"artifact:{d}", "limit": 100}
            )
            for view in views:
                if view["transaction"]["body"]["trigger"] == trigger:
                    return view
            time.sleep(0.01)
        raise AssertionError(f"no verdict for {trigger}")

    def deploy(self, label: str, release: str, environment: str, status: str) -> None:
        d = self.h.digests[release]
        body = {
            "service": "svc",
            "environment": environment,
            "version": release,
            "digest": d,
            "strategy": "rolling",
            "status": status,
            "commits": [f"c-{release}"],
        }
        self.rec(label, "ops", "deploy.finished", f"artifact:{d}", body)

    def open(self, label: str, environment: str, reason: str, command: list[str]) -> None:
        body = {"environment": environment, "reason": reason, "command": command}
        self.rec(label, "ops", "access.opened", f"env:{environment}", body)

    def close(self, label: str, session: str, duration_ms: int) -> None:
        body = {"session": self.h.ids[session], "exit_code": 0, "duration_ms": duration_ms}
        self.rec(label, "ops", "access.closed", "env:production", body)

    def sla(self, label: str, period: str) -> None:
        body = {
            "contract": "rpc-sla",
            "objective": "availability",
            "period": period,
            "measured": "99.2%",
            "target": "99.9%",
        }
        self.rec(label, "node", "sla.violation", "service:rpc", body)

    def boundary(self) -> str:
        """A time strictly after everything so far and before everything next (ts have
        millisecond resolution)."""
        time.sleep(0.01)
        moment = format_ts(Signer("x", PrivateKey.generate(), ledger="").clock.now())
        time.sleep(0.01)
        return moment


def _build(path: Path) -> History:
    home = Home(path)
    info = home.init()
    history = History(path=path, genesis=info["genesis_hash"])
    client = LocalClient(home.open_node())
    try:
        r = Recorder(home, client, history)
        for view in client.list_transactions({"type": "contract.deployed"}):
            body = view["transaction"]["body"]
            history.contracts[f"{body['name']}@{body['version']}"] = view["tx_id"]
        for name, role in ACTORS.items():
            r.add_actor(name, role)
        everything = {"build", "test", "scan", "approvals"}

        # Before the period.
        r.release("F", "shop", "0.9.0", everything)
        r.release("G", "shop", "0.8.0", everything)
        r.deploy("dG1", "G", "production", "success")
        r.open("S0", "production", "INC-6 restart | shop", ["systemctl", "restart", "shop"])
        r.sla("sla_old", "2026-09")
        history.since = r.boundary()

        # In the period.
        source = builtin_source("release-gate")
        v1 = parse_contract(source).version
        source = re.sub(r"(?m)^version: \d+$", f"version: {v1 + 1}", source)
        source += 'applies: request.body.service != "docs"\n'
        _, receipt = deploy_contract(client, r.signers["admin"], source)
        history.contracts[f"release-gate@{v1 + 1}"] = receipt.tx_id
        r.deploy("dF", "F", "production", "success")
        r.deploy("dG2", "G", "production", "success")  # a redeploy: G completed before
        # A late approval re-runs G's gate in the period; G itself is not listed.
        body = {"digest": history.digests["G"], "release": "shop-0.8.0"}
        trigger = r.rec("rm1_G2", "rm1", "approval.granted", f"artifact:{body['digest']}", body)
        history.verdicts["G2"] = view = r.wait_for_verdict(trigger, body["digest"])
        history.ids["vG2"], history.ts["vG2"] = view["tx_id"], view["transaction"]["ts"]
        r.close("S0c", "S0", 900_000)
        r.release("A", "shop", "1.0.0", everything)
        r.deploy("dA", "A", "production", "success")
        r.release("B", "shop", "1.1.0", {"build", "test", "scan"})
        r.deploy("dB", "B", "staging", "success")  # not production
        r.release("C", "docs", "3.0.0", {"build"}, verdict=False)  # the gate does not apply
        r.release("D", "api", "2.0.0", everything)
        r.deploy("dD", "D", "production", "failure")
        r.release("E", "api", "2.1.0", {"build", "test"})
        job = {"run": "gate-E", "job": "security-scan"}
        r.rec(
            "jobE", "ci", "job.started", f"artifact:{history.digests['E']}", job, (r.h.ids["vE"],)
        )
        r.open("S1", "production", "INC-7 disk full", ["df", "-h"])
        r.close("S1c", "S1", 1200)
        r.open("S3", "staging", "try a fix", ["ls"])
        r.close("S3c", "S3", 10)
        r.open("S2", "production", "INC-9 investigate", ["journalctl", "-u", "rpc"])
        r.sla("sla_in", "2026-10")
        r.release("H", "shop", "1.2.0", everything)
        history.until = r.boundary()

        # After the period.
        r.deploy("dH", "H", "production", "success")
        r.sla("sla_after", "2026-11")
    finally:
        client.close()
    return history


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_VARS:
            mp.delenv(name, raising=False)
        yield _build(tmp_path_factory.mktemp("audit") / "home")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _report(h: History, *, since: str | None, until: str | None) -> AuditReport:
    node = Home(h.path).open_node(writable=False)
    try:
        return build_report(LocalClient(node), since=since, until=until)
    finally:
        node.close()


@pytest.fixture(scope="module")
def report(history: History) -> AuditReport:
    return _report(history, since=history.since, until=history.until)


def _release(h: History, name: str, gate: str, deploy: str | None = None) -> dict[str, Any]:
    body = h.verdicts.get(name)
    return {
        "tx_id": h.ids[name],
        "service": {"F": "shop", "G": "shop", "A": "shop", "B": "shop", "H": "shop"}.get(
            name, "docs" if name == "C" else "api"
        ),
        "version": {
            "F": "0.9.0",
            "G": "0.8.0",
            "A": "1.0.0",
            "B": "1.1.0",
            "C": "3.0.0",
            "D": "2.0.0",
            "E": "2.1.0",
            "H": "1.2.0",
        }[name],
        "digest": h.digests[name],
        "requested_at": h.ts[name],
        "requested_by": "dev",
        "gate": gate,
        "verdict": body["tx_id"] if body is not None else None,
        "deploy": None
        if deploy is None
        else {
            "tx_id": h.ids[deploy],
            "environment": "production",
            "version": name,
            "strategy": "rolling",
            "time": h.ts[deploy],
            "actor": "ops",
        },
    }


def _verdict(
    h: History, name: str, version: int, release: str | None = None, trigger: str | None = None
) -> dict[str, Any]:
    """What the report says of verdict ``name`` (by default, of release ``name`` and
    triggered by its request)."""
    view = h.verdicts[name]
    body = view["transaction"]["body"]
    labels = {tx_id: label for label, tx_id in h.ids.items()}
    return {
        "tx_id": view["tx_id"],
        "contract": "release-gate",
        "version": version,
        "subject": f"artifact:{h.digests[release or name]}",
        "trigger": h.ids[trigger or name],
        "release": h.ids[release or name],
        "result": body["result"],
        "time": view["transaction"]["ts"],
        "actor": "node",
        "requirements": [
            {
                "name": req["name"],
                "result": req["result"],
                "reason": req["reason"],
                "evidence": [h.ref(labels[e]) for e in req["evidence"]],
            }
            for req in body["requirements"]
        ],
    }


def _results(h: History, name: str) -> dict[str, tuple[str, set[str]]]:
    """requirement -> (result, labels of the evidence it cites)."""
    labels = {tx_id: label for label, tx_id in h.ids.items()}
    return {
        req["name"]: (req["result"], {labels[e] for e in req["evidence"]})
        for req in h.verdicts[name]["transaction"]["body"]["requirements"]
    }


def _session(
    h: History, name: str, close: str | None, env_reason_cmd: tuple[str, str, list[str]]
) -> dict[str, Any]:
    environment, reason, command = env_reason_cmd
    return {
        "session": h.ids[name],
        "actor": "ops",
        "environment": environment,
        "reason": reason,
        "command": command,
        "opened_at": h.ts[name],
        "closed": h.ids[close] if close else None,
        "closed_at": h.ts[close] if close else None,
        "exit_code": 0 if close else None,
        "duration_ms": {"S0c": 900_000, "S1c": 1200}.get(close or "") if close else None,
        "status": "closed" if close else STILL_OPEN,
    }


def _sla(h: History, label: str, period: str) -> dict[str, Any]:
    return {
        "tx_id": h.ids[label],
        "contract": "rpc-sla",
        "objective": "availability",
        "period": period,
        "measured": "99.2%",
        "target": "99.9%",
        "time": h.ts[label],
        "actor": "node",
    }


S0 = ("production", "INC-6 restart | shop", ["systemctl", "restart", "shop"])
S1 = ("production", "INC-7 disk full", ["df", "-h"])
S2 = ("production", "INC-9 investigate", ["journalctl", "-u", "rpc"])


# -- the sections ---------------------------------------------------------------------


def test_the_gate_verdicts_are_the_engines(history: History) -> None:
    """The premise of the history: what the node's release gate decided."""
    h = history
    assert _results(h, "A") == {
        "build": ("pass", {"build_A"}),
        "tests": ("pass", {"test_A"}),
        "scan": ("pass", {"scan_A"}),
        "authors": ("pass", set()),  # the releases name no commits
        "approvals": ("pass", {"rm1_A", "rm2_A"}),
    }
    assert {k: v[0] for k, v in _results(h, "B").items()} == {
        "build": "pass",
        "tests": "pass",
        "scan": "pass",
        "authors": "pass",
        "approvals": "fail",
    }
    assert _results(h, "E")["scan"][0] == "fail"
    assert all(h.verdicts[n]["transaction"]["body"]["result"] == "pass" for n in "FGADH")


def test_releases(history: History, report: AuditReport) -> None:
    h = history
    data = to_json(report)
    assert data["releases"] == {
        "completed": [
            _release(h, "F", "pass", "dF"),  # requested before the period, deployed in it
            _release(h, "A", "pass", "dA"),
        ],
        "in_delivery": [
            _release(h, "D", "pass"),  # its production deploy failed
            _release(h, "E", "pending"),  # failing, but the gate started a scan job
            _release(h, "H", "pass"),  # deployed only after the period
        ],
        "planned": [
            _release(h, "B", "fail"),  # deployed to staging only
            _release(h, "C", "none"),
        ],
    }


def test_verdicts_resolve_their_evidence(history: History, report: AuditReport) -> None:
    h = history
    assert to_json(report)["verdicts"] == [
        _verdict(h, "F", 1),  # before the period, but F is reported
        _verdict(h, "G2", 2, release="G", trigger="rm1_G2"),  # in the period, G is not
        _verdict(h, "A", 2),
        _verdict(h, "B", 2),
        _verdict(h, "D", 2),
        _verdict(h, "E", 2),
        _verdict(h, "H", 2),
    ]
    approvals = report.verdicts[2].requirements[4]
    assert approvals.name == "approvals"
    assert {(e.type, e.actor) for e in approvals.evidence} == {
        ("approval.granted", "rm1"),
        ("approval.granted", "rm2"),
    }


def test_access_sessions_sla_and_contracts(history: History, report: AuditReport) -> None:
    h = history
    data = to_json(report)
    assert data["access_sessions"] == [
        _session(h, "S0", "S0c", S0),  # opened before the period, closed in it
        _session(h, "S1", "S1c", S1),
        _session(h, "S2", None, S2),  # staging S3 is not production
    ]
    assert data["sla_violations"] == [_sla(h, "sla_in", "2026-10")]
    gate = data["contracts"][0]
    assert [c["name"] for c in data["contracts"]] == ["release-gate", "sla"]
    assert (gate["version"], gate["tx_id"]) == (2, h.contracts["release-gate@2"])
    assert [(d["version"], d["tx_id"]) for d in gate["deployments"]] == [
        (1, h.contracts["release-gate@1"]),
        (2, h.contracts["release-gate@2"]),
    ]
    assert gate["digest"] == parse_contract(_source(h, h.contracts["release-gate@2"])).digest
    assert (data["contracts"][1]["version"], data["contracts"][1]["tx_id"]) == (
        1,
        h.contracts["sla@1"],
    )


def _source(h: History, tx_id: str) -> str:
    node = Home(h.path).open_node(writable=False)
    try:
        return str(LocalClient(node).get_transaction(tx_id)["transaction"]["body"]["source"])
    finally:
        node.close()


def test_json_shape_and_ledger(history: History, report: AuditReport) -> None:
    data = to_json(report)
    assert list(data) == [
        "period",
        "ledger",
        "releases",
        "verdicts",
        "access_sessions",
        "sla_violations",
        "contracts",
        "proofs",
        "bundle",
    ]
    assert data["period"] == {"since": history.since, "until": history.until}
    ledger = data["ledger"]
    assert ledger["genesis_hash"] == history.genesis
    assert ledger["origin"] == ledger["checkpoint"].splitlines()[0]
    assert set(ledger["head"]) == {"height", "log_size", "log_root", "block_hash", "time"}
    assert data["bundle"] is None
    json.dumps(data)  # plain JSON all the way down


def _cited(data: dict[str, Any]) -> set[str | None]:
    ids: set[str | None] = set()
    for group in data["releases"].values():
        for rel in group:
            ids |= {rel["tx_id"], rel["verdict"], (rel["deploy"] or {}).get("tx_id")}
    for verdict in data["verdicts"]:
        ids |= {verdict["tx_id"], verdict["trigger"], verdict["release"]}
        ids |= {e["tx_id"] for req in verdict["requirements"] for e in req["evidence"]}
    for session in data["access_sessions"]:
        ids |= {session["session"], session["closed"]}
    ids |= {v["tx_id"] for v in data["sla_violations"]}
    ids |= {d["tx_id"] for c in data["contracts"] for d in c["deployments"]}
    return ids - {None}


def test_every_cited_transaction_has_a_proof_that_verifies(
    history: History, report: AuditReport
) -> None:
    data = to_json(report)
    assert set(data["proofs"]) == _cited(data)
    node_key = Home(history.path).load_key("node").public_key
    checkpoint = open_checkpoint(data["ledger"]["checkpoint"], {"node": node_key})
    assert checkpoint.size == data["ledger"]["head"]["log_size"]
    assert checkpoint.root.hex() == data["ledger"]["head"]["log_root"]
    for tx_id, proof in data["proofs"].items():
        leaf = b64decode(proof["leaf"])
        assert sha256_hex(leaf) == tx_id
        assert leaf_hash(leaf).hex() == proof["leaf_hash"]
        assert proof["tree_size"] == checkpoint.size
        verify_inclusion(
            proof["leaf_index"],
            proof["tree_size"],
            bytes.fromhex(proof["leaf_hash"]),
            [bytes.fromhex(x) for x in proof["hashes"]],
            checkpoint.root,
        )
    indexes = [p["leaf_index"] for p in data["proofs"].values()]
    assert indexes == sorted(indexes)


# -- periods --------------------------------------------------------------------------


def test_the_period_before(history: History) -> None:
    h = history
    data = to_json(_report(h, since=None, until=h.since))
    assert data["releases"] == {
        "completed": [_release(h, "G", "pass", "dG1")],
        "in_delivery": [_release(h, "F", "pass")],
        "planned": [],
    }
    assert [v["tx_id"] for v in data["verdicts"]] == [h.ids["vF"], h.ids["vG"]]
    assert data["access_sessions"] == [_session(h, "S0", None, S0)]  # closed only later
    assert data["sla_violations"] == [_sla(h, "sla_old", "2026-09")]
    assert [(c["name"], c["version"]) for c in data["contracts"]] == [
        ("release-gate", 1),
        ("sla", 1),
    ]


def test_the_period_from_since_on(history: History) -> None:
    h = history
    data = to_json(_report(h, since=h.since, until=None))
    completed = data["releases"]["completed"]
    assert [r["tx_id"] for r in completed] == [h.ids["F"], h.ids["A"], h.ids["H"]]
    assert completed[2] == _release(h, "H", "pass", "dH")
    assert [r["tx_id"] for r in data["releases"]["in_delivery"]] == [h.ids["D"], h.ids["E"]]
    assert data["sla_violations"] == [
        _sla(h, "sla_in", "2026-10"),
        _sla(h, "sla_after", "2026-11"),
    ]
    assert data["access_sessions"][2]["status"] == STILL_OPEN


def test_reads_in_pages_and_only_the_types_it_needs(
    history: History, report: AuditReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small pages give the same report (the cursor works), and no query is untyped."""
    calls: list[dict[str, Any]] = []
    node = Home(history.path).open_node(writable=False)
    client = LocalClient(node)
    original = client.list_transactions

    def spy(filters: dict[str, Any]) -> list[dict[str, Any]]:
        calls.append(dict(filters))
        return original(filters)

    monkeypatch.setattr(client, "list_transactions", spy)
    monkeypatch.setattr("opsledger.app.audit.PAGE", 2)
    try:
        paged = build_report(client, since=history.since, until=history.until)
    finally:
        node.close()
    assert to_json(paged) == to_json(report)
    assert any(c["after"] is not None for c in calls)
    assert {c["type"] for c in calls} == {
        "release.requested",
        "deploy.finished",
        "contract.verdict",
        "job.started",
        "access.opened",
        "access.closed",
        "sla.violation",
        "contract.deployed",
    }
    assert all(c["limit"] == 2 for c in calls)
    assert PAGE == 1000


# -- Markdown and the CLI --------------------------------------------------------------


def test_markdown_report(history: History, report: AuditReport) -> None:
    text = render_markdown(report)
    lines = text.splitlines()
    for heading in (
        "# Audit report",
        "## Releases",
        "### Completed (2)",
        "### In delivery (3)",
        "### Planned (2)",
        "## Contract verdicts (7)",
        "## Production access sessions (3)",
        "## SLA violations (1)",
        "## Contracts in force (2)",
        "## Verifying this report",
        f"### Inclusion proofs ({len(report.proofs)})",
    ):
        assert heading in lines, heading
    header = "| Service | Version | Digest | Requested | By | Gate | Verdict | Request |"
    assert f"{header} Deployed | Environment | Deploy |" in lines
    assert (
        lines[lines.index(f"{header} Deployed | Environment | Deploy |") + 1]
        == "|---" + ("|---" * 10) + "|"
    )
    assert "| Requirement | Result | Reason | Evidence |" in lines
    assert "| Evidence | Type | Actor | Time |" in lines
    assert any(line.startswith("| Session | Actor | Environment |") for line in lines)
    assert f"**{STILL_OPEN}**" in text
    assert "INC-6 restart \\| shop" in text  # a pipe in free text does not break the table
    assert report.ledger.checkpoint in text
    assert f"opsledger verify --bundle FILE --genesis {history.genesis}" in text
    proofs = lines[lines.index("```json") + 1 : lines.index("```", lines.index("```json"))]
    assert [json.loads(p)["tx_id"] for p in proofs] == list(report.proofs)
    for label in ("A", "B", "C", "D", "E", "F", "H"):
        assert f"`{history.ids[label][:12]}`" in text
    assert "[bold" not in text and "\x1b[" not in text


def run(home: Path | None, *args: str) -> Result:
    argv = (["--home", str(home)] if home is not None else []) + list(args)
    result = CliRunner().invoke(app, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_json_is_the_report(history: History, report: AuditReport) -> None:
    args = ("audit", "report", "--since", history.since, "--until", history.until)
    result = run(history.path, *args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == to_json(report)
    assert json.loads(run(history.path, *args, "--json").stdout) == to_json(report)
    text = run(history.path, *args).stdout
    assert text == render_markdown(report)


def test_cli_writes_the_report_and_a_bundle_that_verifies(
    history: History, report: AuditReport, tmp_path: Path
) -> None:
    out, bundle = tmp_path / "audit.md", tmp_path / "ledger.jsonl.gz"
    result = run(
        history.path,
        "audit",
        "report",
        "--since",
        history.since,
        "--until",
        history.until,
        "--output",
        str(out),
        "--bundle",
        str(bundle),
    )
    assert result.exit_code == 0, result.stderr
    command = f"opsledger verify --bundle {bundle} --genesis {history.genesis}"
    assert command in result.stdout
    text = out.read_text()
    assert text == render_markdown(with_bundle(report, str(bundle)))
    assert f"```\n{command}\n```" in text

    verified = run(None, *shlex.split(command)[1:], "--json")
    assert verified.exit_code == 0, verified.stderr
    outcome = json.loads(verified.stdout)
    assert outcome["ok"] is True
    assert outcome["log_size"] == report.ledger.head["log_size"]
    assert outcome["log_root"] == report.ledger.head["log_root"]


def test_cli_json_names_the_bundle(history: History, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    result = run(history.path, "audit", "report", "--json", "--bundle", str(bundle))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["bundle"] == {
        "file": str(bundle),
        "verify_command": f"opsledger verify --bundle {bundle} --genesis {history.genesis}",
    }
    assert data["period"] == {"since": None, "until": None}
    assert bundle.exists()


def test_cli_dates_and_errors(history: History, tmp_path: Path) -> None:
    day = history.since[:10]
    result = run(history.path, "audit", "report", "--json", "--since", day, "--until", day)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --since must be before --until"
    result = run(history.path, "audit", "report", "--since", "last tuesday")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --since must be an RFC 3339 time")
    result = run(history.path, "audit", "report", "--json", "--since", f"{day}T00:00:00+00:00")
    assert json.loads(result.stdout)["period"]["since"] == f"{day}T00:00:00.000Z"
    result = run(history.path, "audit", "report", "-o", str(tmp_path / "no" / "such" / "x.md"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot write")
    assert len(result.stderr.strip().splitlines()) == 1


class _HeadAt:
    """A client whose head is an older block, as if the ledger grew after it was read."""

    def __init__(self, client: LocalClient, head: dict[str, Any]) -> None:
        self._client = client
        self._head = head

    def head(self) -> dict[str, Any]:
        return self._head

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_report_keeps_to_one_snapshot(history: History) -> None:
    """Whatever lies past the head read first is left out, and every proof is against
    that head's checkpoint: the report verifies even if the ledger grew meanwhile."""
    node = Home(history.path).open_node(writable=False)
    client = LocalClient(node)
    try:
        sla_in = client.get_transaction(history.ids["sla_in"])
        block = client.get_block(sla_in["height"] - 1)
        size = block["header"]["log_size"]
        head = {
            **client.head(),
            "height": block["height"],
            "log_size": size,
            "log_root": block["header"]["log_root"],
        }
        older = build_report(cast(LedgerClient, _HeadAt(client, head)), since=history.since)
    finally:
        node.close()
    assert older.sla_violations == []  # sla_in and sla_after are past that head
    assert [r.tx_id for r in older.releases.in_delivery] == [history.ids[x] for x in "DE"]
    assert older.ledger.checkpoint.splitlines()[1] == str(size)
    assert all(p.leaf_index < size and p.tree_size == size for p in older.proofs.values())


def test_the_offline_check_in_the_docs_runs(
    report: AuditReport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    block = doc.split("<!-- audit-check:begin -->")[1].split("<!-- audit-check:end -->")[0]
    code = "\n".join(line.removeprefix("   ") for line in block.strip().splitlines()[1:-1])
    (tmp_path / "q4-audit.json").write_text(json.dumps(to_json(report)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/audit.md", "exec"), {})
    size = report.ledger.head["log_size"]
    expected = f"{len(report.proofs)} inclusion proofs verify against tree size {size}\n"
    assert capsys.readouterr().out == expected
