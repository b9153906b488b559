"""GitHub webhooks: settings, the store of seen deliveries, and recording as a service.

``opsledger.yaml``::

    webhooks:
      github:
        secret_env: OPSLEDGER_GITHUB_SECRET   # or secret_file: PATH (mode 0600)
        actor: github                         # default "github"; its key: keys/github.key
        max_age_hours: 24                     # default 24

Everything here is built once when the server starts (``load_github_webhook``), so a
missing secret or key is a ``ConfigError`` at start-up, not a 500 on the first delivery.

**Why seen deliveries live in a SQLite table** (``webhooks.db`` in the home) rather than
being derived from the ledger alone: the ledger answers queries by type, actor, subject
and time, never by a body field, so "was delivery X recorded?" would be a scan of every
webhook transaction ever made, on every delivery. The table is an index, not the truth:
every recorded body also carries ``delivery`` (the ``X-GitHub-Delivery`` id), so the
ledger alone still shows which delivery made which transaction.

**Invariants**, and how the order of steps keeps them:

1. *A delivery is recorded at most once.* A delivery is claimed (a ``pending`` row, its
   primary key is the delivery id) before it is submitted, so two concurrent copies of
   one delivery cannot both reach the ledger: the second gets ``DeliveryInProgress``.
2. *Nothing is refused into limbo.* A definite refusal (bad input, permission, replay)
   releases the claim, so a corrected redelivery can go through. An ambiguous failure
   (the store failed, the commit timed out: the transaction may still be committed)
   keeps the claim; once the claim is older than ``CLAIM_LEASE_SECONDS`` the next copy
   looks the delivery id up in the ledger (the service actor's transactions since the
   claim) and either completes the row from what it finds or records afresh. A crash
   between commit and completion is resolved the same way.
3. *An acknowledged delivery is durable.* The row is marked recorded only after the
   ledger acknowledged the transaction; if marking it fails, the transaction still
   stands (and invariant 2 finds it on a redelivery), so the answer is still success.
4. *The secret never leaves ``WebhookSecret``*: its ``repr`` is redacted, it is never
   put into an error, a log line or a transaction.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsledger.app.config import load_section
from opsledger.app.home import Home
from opsledger.app.keys import key_path, load_key, load_key_from_env
from opsledger.client.base import LedgerClient, Signer
from opsledger.core import (
    Clock,
    ConfigError,
    Conflict,
    InvalidInput,
    PermissionDenied,
    PrivateKey,
    Receipt,
    ReplayRejected,
    SignedTransaction,
    StorageError,
    Subject,
    SystemClock,
    format_ts,
)

__all__ = [
    "CLAIM_LEASE_SECONDS",
    "DEFAULT_ACTOR",
    "DEFAULT_MAX_AGE_HOURS",
    "DeliveryInProgress",
    "DeliveryStore",
    "GithubWebhook",
    "Recorded",
    "SeenDelivery",
    "StaleDelivery",
    "WebhookSecret",
    "load_github_webhook",
]

logger = logging.getLogger("opsledger.webhooks")

DEFAULT_ACTOR = "github"
DEFAULT_MAX_AGE_HOURS = 24.0
CLAIM_LEASE_SECONDS = 120.0
"""How long a pending claim blocks copies of its delivery: four times the API's commit
timeout, so a claim is only taken over once its own request has certainly given up."""
CLAIM_LOOKBACK_SECONDS = 5.0
"""The ledger lookup for an abandoned claim starts this long before the claim: the
transaction's ``ts`` is signed after the claim, by the same clock, but be generous."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ACTOR_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_WEBHOOK_KEYS = {"github"}
_GITHUB_KEYS = {"secret_env", "secret_file", "actor", "max_age_hours"}


class StaleDelivery(Conflict):
    """The delivery's own timestamp is older than ``max_age_hours``: refused (HTTP 409)
    so a captured, correctly signed payload cannot be replayed into the ledger later.
    Carries ``event_time`` and ``max_age_hours``."""

    code = "stale_delivery"


class DeliveryInProgress(Conflict):
    """Another copy of this delivery is being recorded right now (HTTP 409); retry later."""

    code = "delivery_in_progress"


class WebhookSecret:
    """The shared HMAC secret. The only object that holds it; nothing prints it."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not value:
            raise ConfigError("the webhook secret is empty", key="webhooks.github")
        self._value = value

    def __repr__(self) -> str:
        return "WebhookSecret(<redacted>)"

    def signature(self, body: bytes) -> str:
        """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
        return "sha256=" + hmac.new(self._value, body, hashlib.sha256).hexdigest()

    def matches(self, body: bytes, header: str) -> bool:
        """Constant-time comparison of the whole header value with the expected one.
        Header values arrive as latin-1 decoded text, so encoding back cannot fail."""
        expected = self.signature(body).encode("ascii")
        return hmac.compare_digest(expected, header.strip().encode("latin-1"))


@dataclass(frozen=True, slots=True)
class SeenDelivery:
    """A row of the store: ``tx_id`` is None while the delivery is only claimed."""

    delivery: str
    event: str
    tx_id: str | None
    claimed_at: float


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``GithubWebhook.record`` did: a new transaction (``receipt``) or, for a
    delivery seen before, the id of the transaction it made then (``duplicate``)."""

    tx_id: str
    duplicate: bool
    receipt: Receipt | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    provider    TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    event       TEXT NOT NULL,
    tx_id       TEXT,
    claimed_at  REAL NOT NULL,
    recorded_at REAL,
    PRIMARY KEY (provider, delivery)
) WITHOUT ROWID
"""


class DeliveryStore:
    """Seen webhook deliveries in SQLite, one row per (provider, delivery id).

    A connection per operation: webhooks arrive a few per second at most, a connection
    costs tens of microseconds, and the route calls from worker threads, so nothing is
    shared between threads and nothing needs closing. WAL with ``synchronous=FULL``:
    a row marked recorded survives power loss, like the ledger it indexes.
    """

    def __init__(self, path: Path, provider: str = "github") -> None:
        self.path = path
        self.provider = provider
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"DeliveryStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open the webhook store {self.path}: {exc}", path=str(self.path)
            ) from exc
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.Error as exc:
            raise StorageError(
                f"the webhook store {self.path} failed: {exc}", path=str(self.path)
            ) from exc
        finally:
            conn.close()

    def get(self, delivery: str) -> SeenDelivery | None:
        with self._connect() as conn:
            return self._get(conn, delivery)

    def _get(self, conn: sqlite3.Connection, delivery: str) -> SeenDelivery | None:
        row = conn.execute(
            "SELECT delivery, event, tx_id, claimed_at FROM deliveries"
            " WHERE provider = ? AND delivery = ?",
            (self.provider, delivery),
        ).fetchone()
        return SeenDelivery(row[0], row[1], row[2], float(row[3])) if row else None

    def claim(self, delivery: str, event: str, now: float) -> SeenDelivery | None:
        """Claim ``delivery``: None when this call claimed it, else the existing row."""
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT INTO deliveries (provider, delivery, event, claimed_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (self.provider, delivery, event, now),
            )
            if cursor.rowcount == 1:
                return None
            return self._get(conn, delivery)

    def take_over(self, delivery: str, claimed_at: float, now: float) -> bool:
        """Renew an abandoned claim, only if nobody renewed or completed it meanwhile."""
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET claimed_at = ? WHERE provider = ? AND delivery = ?"
                " AND tx_id IS NULL AND claimed_at = ?",
                (now, self.provider, delivery, claimed_at),
            )
            return cursor.rowcount == 1

    def complete(self, delivery: str, tx_id: str, now: float) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE deliveries SET tx_id = ?, recorded_at = ?"
                " WHERE provider = ? AND delivery = ?",
                (tx_id, now, self.provider, delivery),
            )

    def release(self, delivery: str) -> None:
        """Forget a claim whose delivery was refused, so a redelivery is tried afresh."""
        with self._connect() as conn:
            conn.execute(
                "DELETE FROM deliveries WHERE provider = ? AND delivery = ? AND tx_id IS NULL",
                (self.provider, delivery),
            )


@dataclass(frozen=True, slots=True, repr=False)
class GithubWebhook:
    """The configured GitHub webhook: secret, service signer, max age, seen deliveries."""

    secret: WebhookSecret
    signer: Signer
    max_age: _dt.timedelta
    deliveries: DeliveryStore
    clock: Clock

    def __repr__(self) -> str:
        return (
            f"GithubWebhook(actor={self.signer.actor!r}, max_age={self.max_age},"
            f" deliveries={self.deliveries!r})"
        )

    @property
    def actor(self) -> str:
        return self.signer.actor

    def seen(self, delivery: str) -> str | None:
        """The transaction id a delivery already made, if it was recorded."""
        row = self.deliveries.get(delivery)
        return row.tx_id if row is not None else None

    def check_fresh(self, event_time: _dt.datetime) -> None:
        """Refuse a delivery whose own timestamp is older than the configured max age."""
        if self.clock.now() - event_time > self.max_age:
            hours = self.max_age.total_seconds() / 3600
            raise StaleDelivery(
                f"the delivery's timestamp {format_ts(event_time)} is more than {hours:g} hours"
                " old; nothing was recorded (raise webhooks.github.max_age_hours to accept it)",
                event_time=format_ts(event_time),
                max_age_hours=hours,
            )

    def record(
        self,
        client: LedgerClient,
        *,
        delivery: str,
        event: str,
        event_time: _dt.datetime,
        tx_type: str,
        subject: Subject,
        body: dict[str, Any],
    ) -> Recorded:
        """Record one delivery as one transaction signed by the service actor, at most
        once (see the module docstring for the order of steps and why)."""
        seen = self.deliveries.get(delivery)
        if seen is not None and seen.tx_id is not None:
            return Recorded(seen.tx_id, duplicate=True)
        self.check_fresh(event_time)
        signed_body = {**body, "delivery": delivery}
        # Signing validates the body against its schema: bad payloads fail before a claim.
        stx = self.signer.sign(tx_type, subject, signed_body)
        found = self._claim(client, delivery, event)
        if found is not None:
            return Recorded(found, duplicate=True)
        try:
            receipt = self._submit(client, stx)
        except (InvalidInput, Conflict, ConfigError):
            self.deliveries.release(delivery)  # refused for certain: nothing was written
            raise
        try:
            self.deliveries.complete(delivery, receipt.tx_id, self._now())
        except StorageError:
            logger.warning(
                "github delivery %s is recorded as %s but could not be marked seen; a"
                " redelivery will find it in the ledger",
                delivery,
                receipt.tx_id,
                exc_info=True,
            )
        logger.info("github delivery %s (%s) recorded as %s", delivery, event, receipt.tx_id)
        return Recorded(receipt.tx_id, duplicate=False, receipt=receipt)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _claim(self, client: LedgerClient, delivery: str, event: str) -> str | None:
        """Claim the delivery; the tx id when it turns out to be recorded already."""
        now = self._now()
        existing = self.deliveries.claim(delivery, event, now)
        if existing is None:
            return None
        if existing.tx_id is not None:
            return existing.tx_id
        if now - existing.claimed_at < CLAIM_LEASE_SECONDS:
            raise DeliveryInProgress(
                f"delivery {delivery} is being recorded by another request; retry later",
                delivery=delivery,
            )
        tx_id = self._find_in_ledger(client, delivery, existing.claimed_at)
        if tx_id is not None:
            self.deliveries.complete(delivery, tx_id, now)
            return tx_id
        if not self.deliveries.take_over(delivery, existing.claimed_at, now):
            raise DeliveryInProgress(
                f"delivery {delivery} is being recorded by another request; retry later",
                delivery=delivery,
            )
        return None

    def _find_in_ledger(self, client: LedgerClient, delivery: str, since: float) -> str | None:
        """The transaction the service actor made for ``delivery`` after ``since``."""
        start = _dt.datetime.fromtimestamp(since - CLAIM_LOOKBACK_SECONDS, _dt.UTC)
        cursor: int | None = None
        while True:
            page = client.list_transactions(
                {"actor": self.actor, "since": format_ts(start), "after": cursor, "limit": 1000}
            )
            for view in page:
                if view["transaction"]["body"].get("delivery") == delivery:
                    return str(view["tx_id"])
            if len(page) < 1000:
                return None
            cursor = int(page[-1]["leaf_index"])

    def _submit(self, client: LedgerClient, stx: SignedTransaction) -> Receipt:
        """Submit, re-signing once past the actor's last nonce after a collision (CI jobs
        may sign as the same actor from other processes). The service identity lacking a
        role or an active key is our configuration, not the sender's fault."""
        try:
            try:
                return client.submit(stx)
            except ReplayRejected:
                last = client.actor(self.actor).get("last_nonce")
                self.signer.bump_past(max(stx.tx.nonce, last if isinstance(last, int) else 0))
                tx = stx.tx
                return client.submit(self.signer.sign(tx.type, tx.subject, tx.body, tx.refs))
        except PermissionDenied as exc:
            raise ConfigError(
                f"the webhook actor {self.actor!r} may not record {stx.tx.type}: {exc.message}"
                " (check webhooks.github.actor, its roles and its key)",
                key="webhooks.github.actor",
            ) from exc


def load_github_webhook(home: Home, *, clock: Clock | None = None) -> GithubWebhook | None:
    """The GitHub webhook of ``home``, or None when ``webhooks.github`` is not configured.

    Raises ``ConfigError`` naming the key for anything wrong: unknown keys, a missing or
    empty secret, a secret file others can read, a bad max age, no key for the actor.
    """
    path = home.config_path
    section = load_section(path, "webhooks")
    unknown = sorted(set(section) - _WEBHOOK_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key webhooks.{unknown[0]}", key=f"webhooks.{unknown[0]}"
        )
    if "github" not in section:
        return None
    github = section["github"] or {}
    if not isinstance(github, dict):
        raise ConfigError(f"{path}: webhooks.github must be a mapping", key="webhooks.github")
    unknown = sorted(set(github) - _GITHUB_KEYS)
    if unknown:
        key = f"webhooks.github.{unknown[0]}"
        raise ConfigError(f"{path}: unknown key {key}", key=key)
    actor = github.get("actor", DEFAULT_ACTOR)
    if not isinstance(actor, str) or not _ACTOR_NAME.match(actor):
        raise ConfigError(
            f"{path}: webhooks.github.actor must be an actor name", key="webhooks.github.actor"
        )
    clock = clock or SystemClock()
    return GithubWebhook(
        secret=_load_secret(home, github),
        signer=Signer(actor, _service_key(home, actor), clock, ledger=home.ledger_id()),
        max_age=_max_age(path, github.get("max_age_hours", DEFAULT_MAX_AGE_HOURS)),
        deliveries=DeliveryStore(home.path / "webhooks.db"),
        clock=clock,
    )


def _max_age(path: Path, value: Any) -> _dt.timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ConfigError(
            f"{path}: webhooks.github.max_age_hours must be a positive number of hours",
            key="webhooks.github.max_age_hours",
        )
    return _dt.timedelta(hours=value)


def _load_secret(home: Home, github: dict[str, Any]) -> WebhookSecret:
    env, file = github.get("secret_env"), github.get("secret_file")
    if (env is None) == (file is None):
        raise ConfigError(
            f"{home.config_path}: give webhooks.github.secret_env or secret_file (exactly one)",
            key="webhooks.github.secret_env",
        )
    if env is not None:
        if not isinstance(env, str) or not _ENV_NAME.match(env):
            raise ConfigError(
                "webhooks.github.secret_env must name an environment variable",
                key="webhooks.github.secret_env",
            )
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(
                f"webhooks.github.secret_env names {env}, which is not set or empty",
                key="webhooks.github.secret_env",
            )
        return WebhookSecret(value.encode("utf-8"))
    if not isinstance(file, str) or not file:
        raise ConfigError(
            "webhooks.github.secret_file must be a path", key="webhooks.github.secret_file"
        )
    return WebhookSecret(_read_secret_file(home.path / Path(file).expanduser()))


def _read_secret_file(path: Path) -> bytes:
    """Like key files: refused when group or others may read it. A trailing newline is
    not part of the secret (editors add one; GitHub's form never holds one)."""
    key = "webhooks.github.secret_file"
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"secret file {path} has mode {stat.S_IMODE(mode):04o}; it must be 0600",
                key=key,
            )
        value = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot read secret file {path}: {exc.strerror or exc}", key=key
        ) from exc
    if not value:
        raise ConfigError(f"secret file {path} is empty", key=key)
    return value


def _service_key(home: Home, actor: str) -> PrivateKey:
    """``keys/<actor>.key``, else ``OPSLEDGER_KEY``/``OPSLEDGER_KEY_FILE`` when
    ``OPSLEDGER_ACTOR`` is unset or names the same actor (the file wins: a server's
    environment key may well belong to its admin)."""
    path = key_path(home.keys_dir, actor)
    if path.exists():
        return load_key(path)
    env_key = load_key_from_env()
    env_actor = os.environ.get("OPSLEDGER_ACTOR")
    if env_key is not None and env_actor and env_actor != actor:
        raise ConfigError(
            f"the key in the environment is {env_actor!r}'s, not the webhook actor {actor!r}'s",
            key="webhooks.github.actor",
        )
    if env_key is None:
        raise ConfigError(
            f"no key for the webhook actor {actor!r}: create one with `opsledger keys new"
            f" {actor} --role ci --kind service` ({path}) or set OPSLEDGER_KEY",
            key="webhooks.github.actor",
        )
    return env_key
