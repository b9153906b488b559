"""Contracts on a real node: verdicts recorded by the runner, re-executed by verify."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsledger.app import Home
from opsledger.app.contracts import deploy_contract, verdicts
from opsledger.client.base import Signer
from opsledger.client.local import LocalClient
from opsledger.contracts import builtin_source
from opsledger.core import Conflict, InvalidInput, PrivateKey, Subject, VerificationFailed
from opsledger.ledger import ContractRunner, LedgerNode, verify_store
from opsledger.testing.factories import digest

D = digest("shop-2.0.0")
ART = Subject("artifact", D)


class World:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.node: LedgerNode = home.open_node()
        self.client = LocalClient(self.node)
        self.admin = home.signer()
        self.signers: dict[str, Signer] = {}

    def actor(self, name: str, *roles: str) -> Signer:
        key = PrivateKey.generate()
        self.client.submit(
            self.admin.sign(
                "identity.key_added",
                Subject("actor", name),
                {"actor": name, "public_key": key.public_key.b64, "roles": list(roles)},
            )
        )
        self.signers[name] = Signer(name, key, ledger=self.admin.ledger)
        return self.signers[name]

    def record(self, actor: str, tx_type: str, body: dict[str, Any], subject: Subject = ART) -> str:
        receipt = self.client.submit(self.signers[actor].sign(tx_type, subject, body))
        self.settle()
        return receipt.tx_id

    def settle(self) -> None:
        runner = next(s for s in self.node.services if isinstance(s, ContractRunner))
        assert runner.wait_idle()

    def latest_verdict(self) -> dict[str, Any]:
        return verdicts(self.client, {"subject": f"artifact:{D}", "limit": 1})[0]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    home = Home(tmp_path / "h")
    home.init()
    w = World(home)
    w.actor("alice", "developer", "release-manager")
    w.actor("ci", "ci")
    w.actor("bob", "release-manager")
    w.actor("carol", "release-manager")
    yield w
    w.node.close()


def _reason(verdict: dict[str, Any], name: str) -> tuple[str, str]:
    requirement = next(r for r in verdict["requirements"] if r["name"] == name)
    return requirement["result"], requirement["reason"]


def test_gate_story_and_verify_re_executes(world: World) -> None:
    w = world
    w.record(
        "alice",
        "code.pushed",
        {
            "repo": "shop",
            "ref": "refs/heads/main",
            "commits": [{"id": "c0ffee", "author": "alice", "time": "2026-11-21T10:00:00Z"}],
        },
        Subject("repo", "shop"),
    )
    w.record(
        "ci",
        "build.finished",
        {"artifact": "shop", "digest": D, "commit": "c0ffee", "status": "success"},
    )
    w.record(
        "ci",
        "test.finished",
        {"digest": D, "suite": "unit", "passed": 5, "failed": 0, "status": "success"},
    )
    scan = w.record(
        "ci",
        "scan.finished",
        {
            "digest": D,
            "scanner": "pip-audit",
            "findings": {"critical": 1, "high": 0, "medium": 0, "low": 0},
        },
    )
    w.record(
        "alice",
        "release.requested",
        {"service": "shop", "version": "2.0.0", "digest": D, "commits": ["c0ffee"]},
    )
    verdict = w.latest_verdict()
    assert verdict["result"] == "fail"
    assert _reason(verdict, "scan") == (
        "fail",
        f"scan {scan} by pip-audit found 1 critical and 0 high"
        " findings (allowed: 0 critical, 0 high)",
    )
    w.record(
        "ci",
        "scan.finished",
        {
            "digest": D,
            "scanner": "pip-audit",
            "findings": {"critical": 0, "high": 0, "medium": 0, "low": 0},
        },
    )
    assert _reason(w.latest_verdict(), "scan")[0] == "pass"
    w.record("alice", "approval.granted", {"digest": D, "release": "shop-2.0.0"})
    result, reason = _reason(w.latest_verdict(), "approvals")
    assert result == "fail" and "refused: approval by alice" in reason
    w.record("bob", "approval.granted", {"digest": D, "release": "shop-2.0.0"})
    w.record("carol", "approval.granted", {"digest": D, "release": "shop-2.0.0"})
    final = w.latest_verdict()
    assert final["result"] == "pass"
    assert _reason(final, "approvals") == ("pass", "approved by bob, carol")
    result_ok = w.node.verify()
    assert result_ok.log_size == w.node.head.log_size


def test_a_forged_verdict_fails_verify_even_when_properly_signed(world: World) -> None:
    """A node that signs a verdict the contract does not give is caught by re-execution."""
    w = world
    w.record(
        "alice",
        "release.requested",
        {"service": "shop", "version": "2.0.0", "digest": D, "commits": []},
    )
    honest = w.latest_verdict()
    assert honest["result"] == "fail"
    forged_body = {
        k: honest[k] for k in ("contract", "version", "trigger", "request", "requirements")
    }
    forged_body["result"] = "pass"
    node_signer = Signer(
        w.home.config().node, w.home.load_key(w.home.config().node), ledger=w.admin.ledger
    )
    forged = w.client.submit(
        node_signer.sign("contract.verdict", ART, forged_body, [honest["trigger"]])
    )
    with pytest.raises(VerificationFailed) as info:
        w.node.verify()
    assert info.value.details["tx_id"] == forged.tx_id
    assert "recorded result pass but re-execution gives fail" in info.value.message
    # an auditor verifying an exported bundle offline re-executes the contracts too
    from opsledger.app.bundle import export_bundle, verify_bundle

    bundle = w.home.path.parent / "audit.jsonl"
    export_bundle(w.node.store, bundle)
    with pytest.raises(VerificationFailed) as offline:
        verify_bundle(bundle)
    assert offline.value.details["tx_id"] == forged.tx_id


def test_deployments_are_admin_only_checked_and_immutable(world: World) -> None:
    w = world
    source = builtin_source("release-gate")
    with pytest.raises(Conflict, match="higher version"):
        deploy_contract(w.client, w.admin, source)
    with pytest.raises(InvalidInput, match="line"):
        deploy_contract(
            w.client,
            w.admin,
            source.replace("version: 1", "version: 2").replace(
                "size(derived.valid_approvals) >= params.approvals",
                "size(derived.valid_approvals) >= 'two'",
            ),
        )
    v2 = source.replace("version: 1", "version: 2").replace("approvals: 2", "approvals: 1")
    with pytest.raises(Exception, match=r"may not write contract\.deployed"):
        deploy_contract(w.client, w.signers["bob"], v2)
    contract, _ = deploy_contract(w.client, w.admin, v2)
    assert contract.ref == "release-gate@2"
    w.record(
        "alice",
        "release.requested",
        {"service": "shop", "version": "2.0.0", "digest": D, "commits": []},
    )
    assert w.latest_verdict()["version"] == 2
    w.node.verify()


def test_runner_catches_up_after_a_restart(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init()
    node = home.open_node()
    runner = next(s for s in node.services if isinstance(s, ContractRunner))
    node.services.remove(runner)
    runner.stop()  # simulate a crash of the runner: triggers land without verdicts
    dev_key = PrivateKey.generate()
    LocalClient(node).submit(
        home.signer().sign(
            "identity.key_added",
            Subject("actor", "dev"),
            {"actor": "dev", "public_key": dev_key.public_key.b64, "roles": ["developer"]},
        )
    )
    LocalClient(node).submit(
        Signer("dev", dev_key, ledger=node.checkpoint_origin).sign(
            "release.requested",
            ART,
            {"service": "shop", "version": "1", "digest": D, "commits": []},
        )
    )
    node.close()
    again = home.open_node()
    try:
        runner = next(s for s in again.services if isinstance(s, ContractRunner))
        assert runner.wait_idle()
        found = verdicts(LocalClient(again), {"subject": f"artifact:{D}"})
        assert len(found) == 1 and found[0]["result"] == "fail"
        again.verify()
    finally:
        again.close()


def test_a_verdict_refused_as_a_replay_is_re_signed_not_lost(world: World) -> None:
    """Services record as the node, like the runner: when another writer's later nonce
    lands first, the runner's verdict is refused as a replay. It must be re-signed and
    recorded, not logged and lost until a restart."""
    w = world
    node_actor = w.home.config().node
    other = w.home.signer(node_actor)  # another writer signing as the node
    runner = next(s for s in w.node.services if isinstance(s, ContractRunner))
    original = runner.signer.next_nonce
    stale = [True]

    def collide() -> int:
        nonce: int = original()
        if stale[0]:  # as if the other writer had just written a later nonce
            stale[0] = False
            w.client.submit(other.sign("note", Subject("service", "x"), {"text": "other"}))
        return nonce

    runner.signer.next_nonce = collide
    w.record("alice", "release.requested", {"service": "shop", "version": "2", "digest": D,
                                            "commits": []})  # fmt: skip
    assert not stale[0]  # the collision happened
    found = verdicts(w.client, {"subject": f"artifact:{D}"})
    assert len(found) == 1 and found[0]["result"] == "fail"
    w.node.verify()


def test_what_a_verdict_records_is_verified_too(tmp_path: Path) -> None:
    """An sla.violation must be exactly what the sla contract's verdict says to record."""
    home = Home(tmp_path / "h")
    home.init()
    w = World(home)
    try:
        w.actor("mon", "operator")
        report = {
            "service": "rpc",
            "window_start": "2026-11-01T00:00:00.000Z",
            "window_end": "2026-11-08T00:00:00.000Z",
            "total": 1000,
            "good": 990,
        }
        w.record("mon", "slo.reported", report, Subject("service", "rpc"))
        violations = w.client.list_transactions({"type": "sla.violation"})
        assert [v["transaction"]["body"]["measured"] for v in violations] == ["99%"]
        w.node.verify()
        verdict_id = violations[0]["transaction"]["refs"][0]
        node_signer = Signer(
            w.home.config().node, w.home.load_key(w.home.config().node), ledger=w.admin.ledger
        )
        softened = {**violations[0]["transaction"]["body"], "measured": "99.8%"}
        w.client.submit(
            node_signer.sign("sla.violation", Subject("service", "rpc"), softened, [verdict_id])
        )
        with pytest.raises(VerificationFailed, match="as the contract records"):
            w.node.verify()
    finally:
        w.node.close()


class _StartedEarlier:
    """A store as verify sees it when a node keeps writing: its first ``head()`` (read
    when verify starts) is an older block; everything else is the live store."""

    def __init__(self, store: Any, head: Any) -> None:
        self._store = store
        self._head: Any = head

    def head(self) -> Any:
        head, self._head = self._head, None
        return head if head is not None else self._store.head()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_verify_checks_only_the_verdicts_of_the_blocks_it_walked(world: World) -> None:
    """Verdicts committed after verify found its head were judged with the registry and
    contracts of the walked blocks only (an approver registered later did not count), a
    false failure. They are for the next verify."""
    w = world
    w.record(
        "ci",
        "build.finished",
        {"artifact": "shop", "digest": D, "commit": "c0ffee", "status": "success"},
    )
    started = w.node.head
    w.actor("dave", "release-manager")  # registered after verify "started"
    w.record(
        "alice",
        "release.requested",
        {"service": "shop", "version": "2.0.0", "digest": D, "commits": ["c0ffee"]},
    )
    w.record("dave", "approval.granted", {"digest": D, "release": "shop-2.0.0"})
    assert _reason(w.latest_verdict(), "approvals")[1].startswith("1 of 2 approvals")

    store = _StartedEarlier(w.node.store, started)
    result = verify_store(store)
    assert result.height == started.height
    verify_store(w.node.store)  # and the whole ledger, as the next verify sees it
