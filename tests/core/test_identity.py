"""The identity rules, applied in order exactly as admission and verify apply them."""

from __future__ import annotations

import pytest

from opsledger.core import PermissionDenied, Registry, ReplayRejected, Subject
from opsledger.core.errors import InvalidInput
from opsledger.testing.factories import key_for, make_tx


def _genesis() -> Registry:
    registry = Registry()
    admin = key_for("admin")
    registry.admit(
        make_tx(
            "identity.key_added",
            {"actor": "admin", "public_key": admin.public_key.b64, "roles": ["admin"]},
            nonce=1,
        )
    )
    return registry


def _add(
    registry: Registry, actor: str, roles: list[str], nonce: int, key_name: str | None = None
) -> None:
    key = key_for(key_name or actor)
    registry.admit(
        make_tx(
            "identity.key_added",
            {"actor": actor, "public_key": key.public_key.b64, "roles": roles},
            nonce=nonce,
            subject=Subject("actor", actor),
        )
    )


def test_genesis_must_be_self_signed_admin() -> None:
    registry = Registry()
    not_self = make_tx(
        "identity.key_added",
        {"actor": "admin", "public_key": key_for("other").public_key.b64, "roles": ["admin"]},
    )
    with pytest.raises(PermissionDenied):
        registry.admit(not_self)
    no_admin = make_tx(
        "identity.key_added",
        {"actor": "admin", "public_key": key_for("admin").public_key.b64, "roles": ["developer"]},
    )
    with pytest.raises(InvalidInput):
        registry.admit(no_admin)
    assert not registry.actors


def test_roles_limit_types_and_note_is_open_to_all() -> None:
    registry = _genesis()
    _add(registry, "dev", ["developer"], 2)
    dev = key_for("dev")
    registry.admit(make_tx("note", {"text": "decision"}, actor="dev", key=dev, nonce=1))
    registry.admit(
        make_tx(
            "release.requested",
            {"service": "s", "version": "1", "digest": "sha256:" + "a" * 64, "commits": []},
            actor="dev",
            key=dev,
            nonce=2,
        )
    )
    with pytest.raises(PermissionDenied, match=r"may not write build.finished"):
        registry.check(
            make_tx(
                "build.finished",
                {
                    "artifact": "a",
                    "digest": "sha256:" + "a" * 64,
                    "commit": "c",
                    "status": "success",
                },
                actor="dev",
                key=dev,
                nonce=3,
            )
        )
    with pytest.raises(PermissionDenied, match=r"may not write identity.key_added"):
        registry.check(
            make_tx(
                "identity.key_added",
                {"actor": "x", "public_key": key_for("x").public_key.b64, "roles": ["admin"]},
                actor="dev",
                key=dev,
                nonce=3,
            )
        )


def test_unknown_actor_and_foreign_key_are_refused() -> None:
    registry = _genesis()
    with pytest.raises(PermissionDenied, match="unknown actor"):
        registry.check(make_tx("note", {"text": "x"}, actor="ghost", nonce=1))
    _add(registry, "dev", ["developer"], 2)
    with pytest.raises(PermissionDenied, match="does not belong"):
        registry.check(make_tx("note", {"text": "x"}, actor="dev", key=key_for("admin"), nonce=5))


def test_nonce_must_strictly_increase() -> None:
    registry = _genesis()
    registry.admit(make_tx("note", {"text": "a"}, nonce=5))
    with pytest.raises(ReplayRejected):
        registry.check(make_tx("note", {"text": "a"}, nonce=5))
    with pytest.raises(ReplayRejected):
        registry.check(make_tx("note", {"text": "b"}, nonce=4))
    registry.check(make_tx("note", {"text": "c"}, nonce=6))


def test_bad_signature_is_refused() -> None:
    registry = _genesis()
    stx = make_tx("note", {"text": "a"}, nonce=5)
    forged = type(stx)(tx=stx.tx, sig=bytes(64), leaf=stx.leaf, tx_id=stx.tx_id)
    with pytest.raises(PermissionDenied, match="signature"):
        registry.check(forged)


def test_rotation_retires_the_old_key() -> None:
    registry = _genesis()
    _add(registry, "ci", ["ci"], 2)
    registry.admit(
        make_tx(
            "identity.key_rotated",
            {
                "actor": "ci",
                "old_key_id": key_for("ci").key_id,
                "public_key": key_for("ci2").public_key.b64,
            },
            nonce=3,
        )
    )
    with pytest.raises(PermissionDenied, match="rotated"):
        registry.check(make_tx("note", {"text": "x"}, actor="ci", key=key_for("ci"), nonce=10))
    registry.check(make_tx("note", {"text": "x"}, actor="ci", key=key_for("ci2"), nonce=10))


def test_revoked_key_signs_nothing_after() -> None:
    registry = _genesis()
    _add(registry, "ci", ["ci"], 2)
    registry.admit(make_tx("note", {"text": "before"}, actor="ci", key=key_for("ci"), nonce=1))
    registry.admit(
        make_tx("identity.key_revoked", {"actor": "ci", "key_id": key_for("ci").key_id}, nonce=3)
    )
    with pytest.raises(PermissionDenied, match="revoked"):
        registry.check(make_tx("note", {"text": "after"}, actor="ci", key=key_for("ci"), nonce=2))
    with pytest.raises(InvalidInput):
        registry.check(
            make_tx(
                "identity.key_revoked", {"actor": "ci", "key_id": key_for("ci").key_id}, nonce=4
            )
        )


def test_a_key_is_registered_once_and_roles_must_exist() -> None:
    registry = _genesis()
    _add(registry, "ci", ["ci"], 2)
    with pytest.raises(InvalidInput, match="already registered"):
        registry.check(
            make_tx(
                "identity.key_added",
                {"actor": "other", "public_key": key_for("ci").public_key.b64, "roles": ["ci"]},
                nonce=3,
            )
        )
    with pytest.raises(InvalidInput, match="unknown role"):
        registry.check(
            make_tx(
                "identity.key_added",
                {"actor": "q", "public_key": key_for("q").public_key.b64, "roles": ["wizard"]},
                nonce=3,
            )
        )


def test_roles_are_ledger_data() -> None:
    registry = _genesis()
    registry.admit(make_tx("identity.role_defined", {"role": "qa", "types": ["test.*"]}, nonce=2))
    _add(registry, "tester", ["qa"], 3)
    registry.check(
        make_tx(
            "test.finished",
            {
                "digest": "sha256:" + "a" * 64,
                "suite": "s",
                "passed": 1,
                "failed": 0,
                "status": "success",
            },
            actor="tester",
            key=key_for("tester"),
            nonce=1,
        )
    )
    with pytest.raises(InvalidInput):
        registry.check(make_tx("identity.role_defined", {"role": "admin", "types": []}, nonce=4))


def test_redefining_a_role_changes_what_its_actors_may_write_at_once() -> None:
    """``may_write`` remembers its answers; a role definition must not leave them stale."""
    registry = _genesis()
    registry.admit(make_tx("identity.role_defined", {"role": "qa", "types": ["note"]}, nonce=2))
    _add(registry, "tester", ["qa"], 3)
    tester = registry.actor("tester")
    assert not registry.may_write(tester, "test.finished")
    registry.admit(make_tx("identity.role_defined", {"role": "qa", "types": ["test.*"]}, nonce=4))
    assert registry.may_write(tester, "test.finished")
    registry.admit(make_tx("identity.role_defined", {"role": "qa", "types": ["build.*"]}, nonce=5))
    assert not registry.may_write(tester, "test.finished")
    assert registry.may_write(tester, "build.finished")
