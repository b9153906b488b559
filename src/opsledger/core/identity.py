"""The identity registry: who may sign what, rebuilt only from ledger transactions.

Invariants (checked by ``check`` for every transaction, in log order, by the node at
admission and again by ``opsledger verify``):

1. the actor is registered (by genesis or ``identity.key_added``);
2. the signing key belongs to that actor and is active: not revoked, not rotated out;
3. one of the actor's roles may write the transaction's type (``note`` is open to every
   registered actor; ``admin`` may write anything);
4. the nonce is strictly greater than the actor's last accepted nonce;
5. ``identity.*`` changes are consistent: a key is added once, rotation names the actor's
   active key, revocation names one of the actor's keys.

The registry is plain in-memory state; ``apply`` mutates it after ``check`` passed.
Genesis bootstraps it: the first transaction of block 0 must be an admin's self-signed
``identity.key_added`` (the trust anchor an auditor pins by the genesis block hash).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from opsledger.core.crypto import PublicKey
from opsledger.core.errors import InvalidInput, NotFound, PermissionDenied, ReplayRejected
from opsledger.core.tx import SignedTransaction

__all__ = ["DEFAULT_ROLES", "OPEN_TYPES", "Actor", "KeyState", "Registry"]

DEFAULT_ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("*",),
    "developer": ("code.pushed", "release.requested"),
    "ci": ("code.pushed", "build.*", "test.*", "scan.*", "job.*", "deploy.*", "pipeline.*"),
    "release-manager": ("approval.granted", "release.*"),
    "operator": (
        "deploy.*",
        "access.*",
        "alert.*",
        "incident.*",
        "slo.*",
        "monitor.silence",
        "monitor.silence_expired",
        "monitor.maintenance",
    ),
    "node": (
        "contract.verdict",
        "sla.violation",
        "slo.*",
        "alert.*",
        "incident.*",
        "gateway.*",
        "monitor.*",
        "indexer.*",
    ),
    "auditor": (),
}
OPEN_TYPES = frozenset({"note"})
"""Types every registered actor may write, whatever its roles."""


@dataclass(slots=True)
class KeyState:
    public_key: PublicKey
    active: bool = True
    retired_by: str | None = None  # "revoked" or "rotated"


@dataclass(slots=True)
class Actor:
    name: str
    roles: tuple[str, ...]
    kind: str = "person"
    keys: dict[str, KeyState] = field(default_factory=dict)
    last_nonce: int = -1

    def active_key_ids(self) -> list[str]:
        return [key_id for key_id, state in self.keys.items() if state.active]


class Registry:
    """Actors, their keys and roles, and their last nonces."""

    def __init__(self) -> None:
        self.actors: dict[str, Actor] = {}
        self.roles: dict[str, tuple[str, ...]] = dict(DEFAULT_ROLES)
        self._keys: dict[str, PublicKey] = {}  # every key ever added, by key_id
        # may_write's answers by (roles, type): matching glob patterns for every admitted
        # transaction was ~3% of the commit thread. Only a role definition changes them.
        self._may_write: dict[tuple[tuple[str, ...], str], bool] = {}

    # -- lookups --
    def known_key(self, key_id: str) -> PublicKey | None:
        """The public key with this id, if it was ever registered (even if retired)."""
        return self._keys.get(key_id)

    def actor(self, name: str) -> Actor:
        found = self.actors.get(name)
        if found is None:
            raise NotFound(f"unknown actor {name!r}", field="actor")
        return found

    def may_write(self, actor: Actor, tx_type: str) -> bool:
        key = (actor.roles, tx_type)
        allowed = self._may_write.get(key)
        if allowed is None:
            allowed = self._may_write[key] = self._roles_allow(actor.roles, tx_type)
        return allowed

    def _roles_allow(self, roles: tuple[str, ...], tx_type: str) -> bool:
        if tx_type in OPEN_TYPES:
            return True
        for role in roles:
            for pattern in self.roles.get(role, ()):
                if pattern == tx_type or fnmatch.fnmatchcase(tx_type, pattern):
                    return True
        return False

    # -- the rules --
    def check(self, stx: SignedTransaction, *, signature_verified: bool = False) -> PublicKey:
        """Raise unless ``stx`` may be appended now; return the key that signed it.

        ``signature_verified`` says the caller already verified the signature against
        ``known_key(stx.tx.key_id)`` (for example in parallel, before sequencing).
        """
        tx = stx.tx
        actor = self.actors.get(tx.actor)
        if actor is None:
            raise PermissionDenied(f"unknown actor {tx.actor!r}", field="actor")
        state = actor.keys.get(tx.key_id)
        if state is None:
            raise PermissionDenied(
                f"key {tx.key_id} does not belong to actor {tx.actor!r}", field="key_id"
            )
        if not state.active:
            raise PermissionDenied(
                f"key {tx.key_id} of {tx.actor!r} was {state.retired_by} and signs nothing now",
                field="key_id",
            )
        if not signature_verified and not stx.verify_signature(state.public_key):
            raise PermissionDenied("signature does not verify", field="sig")
        if not self.may_write(actor, tx.type):
            raise PermissionDenied(
                f"actor {tx.actor!r} (roles: {', '.join(actor.roles) or 'none'}) may not write"
                f" {tx.type}",
                field="type",
            )
        if tx.nonce <= actor.last_nonce:
            raise ReplayRejected(
                f"nonce {tx.nonce} is not above {tx.actor!r}'s last nonce {actor.last_nonce}:"
                " replayed or reordered",
                field="nonce",
            )
        if tx.type.startswith("identity."):
            self._check_identity(stx)
        return state.public_key

    def _check_identity(self, stx: SignedTransaction) -> None:
        body = stx.tx.body
        kind = stx.tx.type
        if kind == "identity.key_added":
            key = PublicKey.from_b64(body["public_key"])
            if key.key_id in self._keys:
                raise InvalidInput("this public key is already registered", field="body.public_key")
            existing = self.actors.get(body["actor"])
            unknown = [role for role in body["roles"] if role not in self.roles]
            if unknown:
                raise InvalidInput(f"unknown role(s): {', '.join(unknown)}", field="body.roles")
            if existing is not None and sorted(existing.roles) != sorted(body["roles"]):
                raise InvalidInput(
                    "actor exists with other roles; add keys with its current roles",
                    field="body.roles",
                )
        elif kind == "identity.key_rotated":
            target = self.actor(body["actor"])
            old = target.keys.get(body["old_key_id"])
            if old is None or not old.active:
                raise InvalidInput(
                    f"{body['actor']!r} has no active key {body['old_key_id']}",
                    field="body.old_key_id",
                )
            key = PublicKey.from_b64(body["public_key"])
            if key.key_id in self._keys:
                raise InvalidInput("this public key is already registered", field="body.public_key")
        elif kind == "identity.key_revoked":
            target = self.actor(body["actor"])
            state = target.keys.get(body["key_id"])
            if state is None or not state.active:
                raise InvalidInput(
                    f"{body['actor']!r} has no active key {body['key_id']}", field="body.key_id"
                )
        elif kind == "identity.role_defined" and body["role"] == "admin":
            raise InvalidInput("the admin role cannot be redefined", field="body.role")

    def apply(self, stx: SignedTransaction) -> None:
        """Record an accepted transaction's effects: its nonce and identity changes."""
        tx = stx.tx
        body = tx.body
        if tx.type == "identity.key_added":
            key = PublicKey.from_b64(body["public_key"])
            actor = self.actors.get(body["actor"])
            if actor is None:
                actor = Actor(body["actor"], tuple(body["roles"]), body.get("kind", "person"))
                self.actors[actor.name] = actor
            actor.keys[key.key_id] = KeyState(key)
            self._keys[key.key_id] = key
        elif tx.type == "identity.key_rotated":
            target = self.actors[body["actor"]]
            old = target.keys[body["old_key_id"]]
            old.active, old.retired_by = False, "rotated"
            key = PublicKey.from_b64(body["public_key"])
            target.keys[key.key_id] = KeyState(key)
            self._keys[key.key_id] = key
        elif tx.type == "identity.key_revoked":
            state = self.actors[body["actor"]].keys[body["key_id"]]
            state.active, state.retired_by = False, "revoked"
        elif tx.type == "identity.role_defined":
            self.roles[body["role"]] = tuple(body["types"])
            self._may_write.clear()
        self.actors[tx.actor].last_nonce = tx.nonce

    # -- genesis --
    def check_genesis_anchor(self, stx: SignedTransaction) -> None:
        """The first transaction of the ledger: an admin adding itself, self-signed."""
        tx = stx.tx
        body = tx.body
        if tx.type != "identity.key_added" or body.get("actor") != tx.actor:
            raise InvalidInput("genesis must start with an admin adding its own key")
        if "admin" not in body.get("roles", ()):
            raise InvalidInput("the genesis actor must have the admin role")
        key = PublicKey.from_b64(body["public_key"])
        if key.key_id != tx.key_id or not stx.verify_signature(key):
            raise PermissionDenied("genesis transaction is not self-signed by the key it adds")
        if self.actors:
            raise InvalidInput("genesis anchor must be the first transaction")

    def admit(self, stx: SignedTransaction, *, signature_verified: bool = False) -> None:
        """``check`` then ``apply``; the genesis anchor when the registry is empty."""
        if not self.actors:
            self.check_genesis_anchor(stx)
        else:
            self.check(stx, signature_verified=signature_verified)
        self.apply(stx)
