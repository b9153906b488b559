"""Key and transaction factories for tests: deterministic keys, signed transactions,
and in-memory ledgers built through the real node code."""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any

from opsledger.core import FixedClock, PrivateKey, SignedTransaction, Subject, Transaction
from opsledger.core import sign_transaction as _sign

__all__ = ["FIXED_START", "digest", "key_for", "make_tx", "sample_bodies"]

FIXED_START = _dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=_dt.UTC)


def key_for(name: str) -> PrivateKey:
    """A deterministic key per name (tests only: the seed is public)."""
    return PrivateKey(hashlib.sha256(b"opsledger-test-key:" + name.encode()).digest())


def digest(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def make_tx(
    tx_type: str,
    body: dict[str, Any],
    *,
    actor: str = "admin",
    key: PrivateKey | None = None,
    nonce: int = 1,
    subject: Subject | None = None,
    ts: str = "2026-11-21T12:00:00.000Z",
    refs: tuple[str, ...] = (),
) -> SignedTransaction:
    key = key or key_for(actor)
    tx = Transaction(
        type=tx_type,
        actor=actor,
        key_id=key.key_id,
        ts=ts,
        nonce=nonce,
        subject=subject or Subject("test", "1"),
        body=body,
        refs=refs,
    )
    return _sign(tx, key)


def sample_bodies() -> dict[str, dict[str, Any]]:
    """One valid body for every schema'd type (the docs and encoding tests use these)."""
    d = digest("artifact")
    deploy = {
        "service": "shop",
        "environment": "prod",
        "version": "1.2.0",
        "digest": d,
        "strategy": "blue-green",
        "status": "success",
        "commits": ["c0ffee"],
    }
    return {
        "note": {"text": "maintenance window 02:00-03:00 UTC"},
        "code.pushed": {
            "repo": "shop",
            "ref": "refs/heads/main",
            "commits": [{"id": "c0ffee", "author": "dev", "time": "2026-11-21T10:00:00Z"}],
        },
        "build.started": {"artifact": "shop", "commit": "c0ffee"},
        "build.finished": {
            "artifact": "shop",
            "digest": d,
            "commit": "c0ffee",
            "status": "success",
        },
        "test.finished": {
            "digest": d,
            "suite": "unit",
            "passed": 120,
            "failed": 0,
            "status": "success",
        },
        "scan.finished": {
            "digest": d,
            "scanner": "pip-audit",
            "findings": {"critical": 0, "high": 1, "medium": 2, "low": 3},
        },
        "approval.granted": {"digest": d, "release": "shop-1.2.0"},
        "release.requested": {
            "service": "shop",
            "version": "1.2.0",
            "digest": d,
            "commits": ["c0ffee"],
        },
        "release.approved": {"service": "shop", "version": "1.2.0", "digest": d},
        "deploy.started": {**deploy, "status": "started"},
        "deploy.finished": deploy,
        "deploy.rolled_back": {**deploy, "status": "rolled_back", "reason": "health check failed"},
        "access.opened": {
            "environment": "prod",
            "reason": "INC-7 disk full",
            "command": ["df", "-h"],
        },
        "access.closed": {"session": "a" * 64, "exit_code": 0, "duration_ms": 1200},
        "alert.fired": {"alert": "NodeHeadLag", "severity": "critical"},
        "alert.resolved": {"alert": "NodeHeadLag"},
        "incident.opened": {"id": "INC-7", "severity": "SEV2", "title": "RPC errors"},
        "incident.escalated": {"id": "INC-7", "to": ["oncall-secondary"], "after_seconds": 900},
        "monitor.notified": {
            "receiver": "ops-hook",
            "event": "alert.firing",
            "outcome": "delivered",
        },
        "monitor.silence": {
            "id": "SIL-1",
            "matchers": [{"name": "target", "value": "node-a", "op": "="}],
            "starts_at": "2026-11-20T10:00:00.000Z",
            "ends_at": "2026-11-20T12:00:00.000Z",
            "comment": "node-a resync",
        },
        "monitor.silence_expired": {"id": "SIL-1"},
        "monitor.maintenance": {
            "id": "MNT-1",
            "title": "Node upgrade",
            "components": ["rpc-mainnet"],
            "starts_at": "2026-11-20T10:00:00.000Z",
            "ends_at": "2026-11-20T11:00:00.000Z",
        },
        "monitor.config_changed": {
            "action": "target_added",
            "target": "node-c",
            "vantage": "eu",
            "spec": {"name": "node-c", "kind": "http", "url": "http://127.0.0.1:9003/"},
        },
        "pipeline.started": {
            "pipeline": "shop",
            "run": "20261122-000000-abcdef",
            "digest": d,
            "jobs": ["compile", "unit"],
        },
        "pipeline.finished": {
            "pipeline": "shop",
            "run": "20261122-000000-abcdef",
            "digest": d,
            "status": "success",
            "jobs": {"compile": "success", "unit": "skipped"},
        },
        "gateway.config_loaded": {
            "digest": d,
            "chains": ["mainnet"],
            "listen": "127.0.0.1:8545",
            "upstreams": 2,
        },
        "gateway.upstream_state": {
            "chain": "mainnet",
            "upstream": "own-1",
            "state": "lagging",
            "previous": "healthy",
            "reason": "head 100 lags the best by 5 blocks",
            "head": 100,
        },
        "indexer.started": {"config_digest": d, "chains": ["local"], "database": "sqlite"},
        "indexer.reorg": {
            "chain": "local",
            "depth": 2,
            "fork_block": 98,
            "replaced": ["0x" + "ab" * 32, "0x" + "cd" * 32],
        },
        "incident.acknowledged": {"id": "INC-7", "owner": "carol"},
        "incident.assigned": {"id": "INC-7", "owner": "dave"},
        "incident.updated": {"id": "INC-7", "text": "failing over to node-b"},
        "incident.attributed": {"id": "INC-7", "deploy": "c" * 64, "decision": "confirmed"},
        "incident.resolved": {"id": "INC-7"},
        "incident.postmortem": {"id": "INC-7", "digest": "sha256:" + "d" * 64},
        "incident.action_item": {"id": "INC-7", "item": 1, "title": "alert on lag", "owner": "eve"},
        "sla.violation": {
            "contract": "rpc-sla",
            "objective": "availability",
            "period": "2026-11",
            "measured": "99.2%",
            "target": "99.9%",
        },
        "slo.reported": {
            "service": "rpc",
            "window_start": "2026-11-01T00:00:00.000Z",
            "window_end": "2026-12-01T00:00:00.000Z",
            "total": 100000,
            "good": 99950,
            "latency_p95_ms": 180,
        },
        "job.started": {"run": "r1", "job": "compile"},
        "job.finished": {"run": "r1", "job": "compile", "status": "success", "exit_code": 0},
        "contract.deployed": {
            "name": "release-gate",
            "version": 1,
            "source": "name: release-gate",
            "digest": d,
        },
        "contract.verdict": {
            "contract": "release-gate",
            "version": 1,
            "trigger": "b" * 64,
            "result": "pass",
            "requirements": [
                {"name": "build", "result": "pass", "reason": "", "evidence": ["c" * 64]}
            ],
        },
        "identity.key_added": {
            "actor": "ci-runner",
            "public_key": key_for("ci-runner").public_key.b64,
            "roles": ["ci"],
            "kind": "service",
        },
        "identity.key_rotated": {
            "actor": "ci-runner",
            "old_key_id": key_for("ci-runner").key_id,
            "public_key": key_for("ci-runner-2").public_key.b64,
        },
        "identity.key_revoked": {"actor": "ci-runner", "key_id": key_for("ci-runner").key_id},
        "identity.role_defined": {"role": "qa", "types": ["test.*", "note"]},
    }


def fixed_clock() -> FixedClock:
    return FixedClock(FIXED_START)
