"""The GitHub webhook, end to end: payloads modelled on GitHub's documented ones
(``fixtures/*.json``), signed with HMAC-SHA256 exactly as GitHub signs them, posted
through the real FastAPI app over a real SQLite home and node, checked in the ledger.

Also the pure mapping functions directly, the configuration, the seen-delivery store's
crash paths, and hypothesis: random bodies and signatures never get a 5xx, and nothing
unsigned is ever recorded.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import json
import logging
import shutil
import sqlite3
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from opsledger.api import create_app
from opsledger.api.webhooks import (
    MAPPERS,
    Evidence,
    Ignored,
    WebhookDuplicateOut,
    WebhookIgnoredOut,
    WebhookRecordedOut,
    enable_github_webhook,
    map_deployment_status,
    map_event,
    map_pull_request,
    map_push,
    map_workflow_run,
    parse_time,
)
from opsledger.app import Home
from opsledger.app.webhooks import (
    CLAIM_LEASE_SECONDS,
    GithubWebhook,
    StaleDelivery,
    load_github_webhook,
)
from opsledger.client.local import LocalClient
from opsledger.core import (
    ConfigError,
    FixedClock,
    InvalidInput,
    PrivateKey,
    Subject,
    parse_subject,
    validate_transaction,
)

with warnings.catch_warnings():
    # starlette 1.x asks for httpx2 under its TestClient; the project pins httpx.
    warnings.filterwarnings(
        "ignore", message="Using `httpx` with `starlette.testclient` is deprecated"
    )
    from fastapi.testclient import TestClient

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "It's a Secret to Everybody 7c1f"
URL = "/api/v1/webhooks/github"
NOW = dt.datetime(2026, 3, 2, 10, 5, tzinfo=dt.UTC)
"""Minutes after the fixtures' own timestamps."""
DIGEST = "sha256:c7c5c1d70c5dec4416ab6158afd0b223ef40c29b1dc1f97ed9428b94d4cadb1c"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def sign(body: bytes, secret: str = SECRET) -> str:
    """What GitHub puts in ``X-Hub-Signature-256``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys come from the home, the secret from the variable the config names."""
    for name in ("OPSLEDGER_KEY", "OPSLEDGER_KEY_FILE", "OPSLEDGER_ACTOR", "OPSLEDGER_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPSLEDGER_GITHUB_SECRET", SECRET)


def configure(home: Home, github: dict[str, Any] | None) -> None:
    """Write ``webhooks.github`` into the home's ``opsledger.yaml`` (None removes it)."""
    data = yaml.safe_load(home.config_path.read_text())
    data.pop("webhooks", None)
    if github is not None:
        data["webhooks"] = {"github": github}
    home.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


GITHUB_CONFIG = {"secret_env": "OPSLEDGER_GITHUB_SECRET", "actor": "github", "max_age_hours": 24}


def add_service(client: LocalClient, home: Home, name: str, roles: list[str]) -> PrivateKey:
    """Register ``name`` (signed by the admin) and save its key under keys/."""
    key = PrivateKey.generate()
    body = {"actor": name, "public_key": key.public_key.b64, "roles": roles, "kind": "service"}
    client.submit(home.signer().sign("identity.key_added", Subject("actor", name), body))
    home.write_key(name, key)
    return key


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """One initialised home with the ``github`` service (role ci) registered and the
    webhook configured; each test copies it (``init`` alone costs a quarter second)."""
    home = Home(tmp_path_factory.mktemp("template") / "h")
    home.init()
    configure(home, GITHUB_CONFIG)
    client = LocalClient(home.open_node())
    try:
        add_service(client, home, "github", ["ci"])
    finally:
        client.close()
    return home


@pytest.fixture
def home(template: Home, tmp_path: Path) -> Home:
    home = Home(tmp_path / "h")
    shutil.copytree(template.path, home.path)
    return home


@pytest.fixture
def client(home: Home) -> Iterator[LocalClient]:
    client = LocalClient(home.open_node())
    yield client
    client.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def webhook(home: Home, client: LocalClient, clock: FixedClock) -> GithubWebhook:
    loaded = load_github_webhook(home, clock=clock)
    assert loaded is not None
    return loaded


@pytest.fixture
def app(client: LocalClient, webhook: GithubWebhook) -> FastAPI:
    app = create_app(client, registry=CollectorRegistry())
    enable_github_webhook(app, webhook)
    return app


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


Deliver = Callable[..., Any]


@pytest.fixture
def deliver(api: TestClient) -> Deliver:
    """``deliver(event, payload, delivery=..., signature=..., headers=...)``: POST as
    GitHub does. ``payload`` is a dict (serialised here) or raw bytes; the signature is
    computed over exactly the bytes sent unless one is given (None: no header)."""

    def post(
        event: str,
        payload: dict[str, Any] | bytes,
        *,
        delivery: str | None = None,
        signature: str | bool | None = True,
        headers: dict[str, str] | None = None,
    ) -> Any:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/5f6e7d1",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-GitHub-Hook-ID": "471203398",
        }
        if signature is True:
            sent["X-Hub-Signature-256"] = sign(raw)
        elif isinstance(signature, str):
            sent["X-Hub-Signature-256"] = signature
        sent.update(headers or {})
        return api.post(URL, content=raw, headers=sent)

    return post


def head(api: TestClient) -> dict[str, Any]:
    response = api.get("/api/v1/head")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def transaction(api: TestClient, tx_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/transactions/{tx_id}", params={"proof": "false"})
    assert response.status_code == 200, response.text
    tx: dict[str, Any] = response.json()["transaction"]
    return tx


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert SECRET not in response.text
    error: dict[str, Any] = body["error"]
    return error


def seen_rows(home: Home) -> list[tuple[Any, ...]]:
    path = home.path / "webhooks.db"
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT delivery, tx_id FROM deliveries ORDER BY delivery").fetchall()


# -- recording each event ----------------------------------------------------------------


def test_push_is_recorded_as_code_pushed_signed_by_the_service(
    api: TestClient, deliver: Deliver
) -> None:
    before = head(api)
    response = deliver("push", fixture("push"), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert response.status_code == 201, response.text
    out = response.json()
    WebhookRecordedOut.model_validate(out)  # the shape the OpenAPI document promises
    assert out["recorded"] == "code.pushed"
    assert out["delivery"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert head(api)["log_size"] == before["log_size"] + 1

    tx = transaction(api, out["tx_id"])
    validate_transaction(tx)
    assert tx["type"] == "code.pushed"
    assert tx["actor"] == "github"
    assert tx["subject"] == {"kind": "repo", "id": "acme/shop"}
    body = tx["body"]
    assert body["repo"] == "acme/shop"
    assert body["ref"] == "refs/heads/main"
    assert body["commits"] == [
        # the GitHub username when GitHub knows the author; times normalised to UTC
        {
            "id": "9f1c2e4b7a30d8e5c6f1a2b3c4d5e6f708192a3b",
            "author": "mona",
            "time": "2026-03-02T09:52:31.000Z",
        },
        {
            "id": "4e8a1f0c3b2d5e6f7a8b9c0d1e2f3a4b5c6d7e8f",
            "author": "Ada Contractor",
            "time": "2026-03-01T23:04:09.000Z",
        },
    ]
    assert body["delivery"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert body["source"] == "github"
    assert body["before"] == "1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e"
    assert body["after"] == "4e8a1f0c3b2d5e6f7a8b9c0d1e2f3a4b5c6d7e8f"
    assert body["pusher"] == "mona"
    assert body["forced"] is False


def test_pull_request_is_a_note_with_structured_fields(api: TestClient, deliver: Deliver) -> None:
    response = deliver("pull_request", fixture("pull_request"))
    assert response.status_code == 201, response.text
    tx = transaction(api, response.json()["tx_id"])
    assert tx["type"] == "note"
    assert tx["subject"] == {"kind": "repo", "id": "acme/shop"}
    body = tx["body"]
    assert body["text"] == "pull request acme/shop#42 closed (merged)"
    assert body["action"] == "closed"
    assert body["number"] == 42
    assert body["head_sha"] == "7c0d9e8f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
    assert body["merged"] is True
    assert body["merge_commit_sha"] == "9f1c2e4b7a30d8e5c6f1a2b3c4d5e6f708192a3b"
    assert body["base_ref"] == "main"
    assert body["author"] == "mona"


def test_completed_workflow_run_is_job_finished(api: TestClient, deliver: Deliver) -> None:
    response = deliver("workflow_run", fixture("workflow_run"))
    assert response.status_code == 201, response.text
    tx = transaction(api, response.json()["tx_id"])
    assert tx["type"] == "job.finished"
    body = tx["body"]
    assert {k: body[k] for k in ("run", "job", "status", "exit_code")} == {
        "run": "8123456789",
        "job": "CI",
        "status": "success",
        "exit_code": 0,
    }
    assert body["conclusion"] == "success"
    assert body["head_sha"] == "4e8a1f0c3b2d5e6f7a8b9c0d1e2f3a4b5c6d7e8f"
    assert body["html_url"] == "https://github.com/acme/shop/actions/runs/8123456789"
    assert body["run_attempt"] == 1
    assert body["trigger"] == "push"


def test_deployment_status_with_a_digest_is_deploy_finished(
    api: TestClient, deliver: Deliver
) -> None:
    response = deliver("deployment_status", fixture("deployment_status"))
    assert response.status_code == 201, response.text
    tx = transaction(api, response.json()["tx_id"])
    assert tx["type"] == "deploy.finished"
    assert tx["subject"] == {"kind": "artifact", "id": DIGEST}
    body = tx["body"]
    assert {
        k: body[k]
        for k in ("service", "environment", "version", "digest", "strategy", "status", "commits")
    } == {
        "service": "shop",
        "environment": "production",
        "version": "1.4.0",
        "digest": DIGEST,
        "strategy": "blue-green",
        "status": "success",
        "commits": ["4e8a1f0c3b2d5e6f7a8b9c0d1e2f3a4b5c6d7e8f"],
    }
    assert body["deployment_id"] == 1402938475


def test_deployment_status_without_a_digest_is_an_honest_note(
    api: TestClient, deliver: Deliver
) -> None:
    payload = fixture("deployment_status")
    payload["deployment"]["payload"] = {}
    response = deliver("deployment_status", payload)
    assert response.status_code == 201, response.text
    tx = transaction(api, response.json()["tx_id"])
    assert tx["type"] == "note"
    assert tx["body"]["missing"] == ["digest", "strategy"]
    assert tx["body"]["state"] == "success"
    assert tx["body"]["environment"] == "production"


# -- refusals ----------------------------------------------------------------------------


def test_wrong_signature_is_401_and_records_nothing(
    api: TestClient, deliver: Deliver, home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    before = head(api)
    raw = json.dumps(fixture("push")).encode()
    with caplog.at_level(logging.DEBUG):
        wrong_secret = deliver("push", raw, signature=sign(raw, "not the secret"))
        tampered = deliver("push", raw.replace(b"mona", b"eve!"), signature=sign(raw))
        garbage = deliver("push", raw, signature="sha256=zz")
        sha1_only = deliver("push", raw, signature=False, headers={"X-Hub-Signature": "sha1=00"})
    for response in (wrong_secret, tampered, garbage):
        assert_error(response, 401, "signature_invalid")
    assert_error(sha1_only, 401, "signature_missing")
    assert head(api) == before
    assert seen_rows(home) == []
    assert SECRET not in caplog.text


def test_unsigned_delivery_is_401_even_for_events_we_ignore(
    api: TestClient, deliver: Deliver
) -> None:
    before = head(api)
    assert_error(deliver("push", fixture("push"), signature=None), 401, "signature_missing")
    assert_error(deliver("issues", {"action": "opened"}, signature=None), 401, "signature_missing")
    assert head(api) == before


def test_duplicate_delivery_answers_the_first_tx_and_records_nothing_new(
    api: TestClient, deliver: Deliver
) -> None:
    first = deliver("push", fixture("push"), delivery="d-1")
    assert first.status_code == 201
    after_first = head(api)
    again = deliver("push", fixture("push"), delivery="d-1")
    assert again.status_code == 200
    assert again.json() == {"duplicate": True, "tx_id": first.json()["tx_id"]}
    WebhookDuplicateOut.model_validate(again.json())
    assert head(api) == after_first


def test_seen_deliveries_survive_a_restart(
    home: Home, client: LocalClient, clock: FixedClock, deliver: Deliver
) -> None:
    first = deliver("workflow_run", fixture("workflow_run"), delivery="restart-1")
    assert first.status_code == 201
    reloaded = load_github_webhook(home, clock=clock)  # a new server process, same home
    assert reloaded is not None
    app = create_app(client, registry=CollectorRegistry())
    enable_github_webhook(app, reloaded)
    raw = json.dumps(fixture("workflow_run")).encode()
    headers = {
        "X-GitHub-Event": "workflow_run",
        "X-GitHub-Delivery": "restart-1",
        "X-Hub-Signature-256": sign(raw),
        "Content-Type": "application/json",
    }
    with TestClient(app) as fresh:
        again = fresh.post(URL, content=raw, headers=headers)
    assert again.status_code == 200
    assert again.json()["tx_id"] == first.json()["tx_id"]


def test_stale_delivery_is_409_and_records_nothing(
    api: TestClient, deliver: Deliver, clock: FixedClock, home: Home
) -> None:
    recorded = deliver("push", fixture("push"), delivery="old-but-seen")
    assert recorded.status_code == 201
    clock.advance(25 * 3600)
    before = head(api)
    error = assert_error(deliver("push", fixture("push")), 409, "stale_delivery")
    assert error["event_time"] == "2026-03-02T09:53:20.000Z"
    assert error["max_age_hours"] == 24
    assert head(api) == before
    # a delivery already recorded is still answered as a duplicate, whatever its age
    assert deliver("push", fixture("push"), delivery="old-but-seen").status_code == 200
    assert [row[0] for row in seen_rows(home)] == ["old-but-seen"]


def test_push_freshness_is_the_push_time_not_the_commit_time(
    deliver: Deliver, clock: FixedClock
) -> None:
    """The fixture's head commit was authored ~11 hours before the push: with a 24 h
    window it is the push time that decides."""
    clock.advance(13 * 3600)  # 23h12 after the push, 24h after the head commit
    assert deliver("push", fixture("push")).status_code == 201


def test_unhandled_events_and_actions_are_202_ignored(api: TestClient, deliver: Deliver) -> None:
    before = head(api)
    ping = deliver("ping", {"zen": "Keep it logically awesome.", "hook_id": 471203398})
    assert ping.status_code == 202
    assert ping.json() == {"ignored": "ping", "reason": "event 'ping' is not recorded"}
    WebhookIgnoredOut.model_validate(ping.json())
    issues = deliver("issues", {"action": "opened"})
    assert issues.status_code == 202
    assert issues.json()["ignored"] == "issues"
    running = fixture("workflow_run")
    running["action"] = "in_progress"
    assert deliver("workflow_run", running).json()["ignored"] == "workflow_run"
    labeled = fixture("pull_request")
    labeled["action"] = "labeled"
    assert deliver("pull_request", labeled).status_code == 202
    assert head(api) == before


def test_not_configured_is_404(app: FastAPI, api: TestClient, deliver: Deliver) -> None:
    enable_github_webhook(app, None)
    error = assert_error(deliver("push", fixture("push")), 404, "not_found")
    assert error["message"] == "GitHub webhooks are not configured"


def test_bad_headers_and_bodies_are_400(api: TestClient, deliver: Deliver) -> None:
    before = head(api)
    cases = [
        deliver("push", fixture("push"), headers={"X-GitHub-Event": ""}),
        deliver("push", fixture("push"), headers={"X-GitHub-Delivery": "a b"}),
        deliver(
            "push", b"payload=%7B%7D", headers={"Content-Type": "application/x-www-form-urlencoded"}
        ),
        deliver("push", b"[1, 2]"),
        deliver("push", b"{not json"),
        deliver("push", {"ref": "refs/heads/main"}),
    ]
    for response in cases:
        assert_error(response, 400, "invalid_input")
    assert head(api) == before


def test_a_payload_value_the_schema_refuses_is_400_and_claims_nothing(
    api: TestClient, deliver: Deliver, home: Home
) -> None:
    payload = fixture("push")
    payload["ref"] = "r" * 5000  # over the schema's 4096 characters
    response = deliver("push", payload, delivery="too-long")
    assert_error(response, 400, "schema_error")
    assert seen_rows(home) == []
    payload["ref"] = "refs/heads/main"
    assert deliver("push", payload, delivery="too-long").status_code == 201


def test_a_service_identity_without_the_role_is_a_logged_500_and_releases_the_claim(
    home: Home, client: LocalClient, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    add_service(client, home, "gh-dev", ["developer"])  # may push, may not write job.*
    configure(home, {**GITHUB_CONFIG, "actor": "gh-dev"})
    hook = load_github_webhook(home, clock=clock)
    assert hook is not None
    app = create_app(client, registry=CollectorRegistry())
    enable_github_webhook(app, hook)
    raw = json.dumps(fixture("workflow_run")).encode()
    headers = {
        "X-GitHub-Event": "workflow_run",
        "X-GitHub-Delivery": "needs-ci-role",
        "X-Hub-Signature-256": sign(raw),
    }
    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=False) as api:
        response = api.post(URL, content=raw, headers=headers)
    assert_error(response, 500, "internal_error")
    assert "gh-dev" in caplog.text and "webhooks.github.actor" in caplog.text
    assert SECRET not in caplog.text
    assert seen_rows(home) == []


# -- the seen-delivery store's crash paths -----------------------------------------------


def test_a_crash_after_commit_is_resolved_from_the_ledger(
    api: TestClient, deliver: Deliver, home: Home, clock: FixedClock
) -> None:
    """Commit done, row never marked (the process died): after the lease, the next copy
    finds the transaction by its ``delivery`` field and records nothing new."""
    first = deliver("push", fixture("push"), delivery="crashed")
    tx_id = first.json()["tx_id"]
    with sqlite3.connect(home.path / "webhooks.db") as conn:
        conn.execute("UPDATE deliveries SET tx_id = NULL WHERE delivery = 'crashed'")
    before = head(api)
    assert_error(deliver("push", fixture("push"), delivery="crashed"), 409, "delivery_in_progress")
    clock.advance(CLAIM_LEASE_SECONDS + 1)
    again = deliver("push", fixture("push"), delivery="crashed")
    assert again.status_code == 200, again.text
    assert again.json() == {"duplicate": True, "tx_id": tx_id}
    assert head(api) == before
    assert seen_rows(home) == [("crashed", tx_id)]


def test_an_abandoned_claim_without_a_transaction_is_taken_over(
    api: TestClient, deliver: Deliver, home: Home, clock: FixedClock
) -> None:
    with sqlite3.connect(home.path / "webhooks.db") as conn:
        conn.execute(
            "INSERT INTO deliveries (provider, delivery, event, claimed_at)"
            " VALUES ('github', 'abandoned', 'push', ?)",
            (clock.now().timestamp(),),
        )
    assert_error(
        deliver("push", fixture("push"), delivery="abandoned"), 409, "delivery_in_progress"
    )
    clock.advance(CLAIM_LEASE_SECONDS + 1)
    response = deliver("push", fixture("push"), delivery="abandoned")
    assert response.status_code == 201, response.text
    assert seen_rows(home) == [("abandoned", response.json()["tx_id"])]


# -- metrics and the document ------------------------------------------------------------


def test_deliveries_are_counted_by_outcome(api: TestClient, deliver: Deliver) -> None:
    deliver("push", fixture("push"), delivery="m-1")
    deliver("push", fixture("push"), delivery="m-1")
    deliver("push", fixture("push"), signature="sha256=00")
    text = api.get("/metrics").text
    assert 'opsledger_webhook_deliveries_total{outcome="recorded",provider="github"} 1.0' in text
    assert 'opsledger_webhook_deliveries_total{outcome="duplicate",provider="github"} 1.0' in text
    assert (
        'opsledger_webhook_deliveries_total{outcome="signature_invalid",provider="github"} 1.0'
        in text
    )


def test_the_openapi_document_names_every_answer(app: FastAPI) -> None:
    operation = app.openapi()["paths"][URL]["post"]
    assert set(operation["responses"]) >= {
        "200",
        "201",
        "202",
        "400",
        "401",
        "404",
        "409",
        "413",
        "500",
        "503",
    }
    headers = {p["name"] for p in operation["parameters"]}
    assert headers == {"X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"}


# -- configuration -----------------------------------------------------------------------


def test_without_the_section_the_webhook_is_off(home: Home) -> None:
    configure(home, None)
    assert load_github_webhook(home) is None


@pytest.mark.parametrize(
    ("github", "key"),
    [
        ({**GITHUB_CONFIG, "secrt_env": "X"}, "webhooks.github.secrt_env"),
        ({"actor": "github"}, "webhooks.github.secret_env"),
        ({**GITHUB_CONFIG, "secret_file": "s"}, "webhooks.github.secret_env"),
        ({**GITHUB_CONFIG, "secret_env": "UNSET_FOR_THIS_TEST"}, "webhooks.github.secret_env"),
        ({**GITHUB_CONFIG, "secret_env": "not a name"}, "webhooks.github.secret_env"),
        ({**GITHUB_CONFIG, "max_age_hours": 0}, "webhooks.github.max_age_hours"),
        ({**GITHUB_CONFIG, "max_age_hours": "1d"}, "webhooks.github.max_age_hours"),
        ({**GITHUB_CONFIG, "max_age_hours": True}, "webhooks.github.max_age_hours"),
        ({**GITHUB_CONFIG, "actor": "Not An Actor"}, "webhooks.github.actor"),
        ({**GITHUB_CONFIG, "actor": "nobody"}, "webhooks.github.actor"),
    ],
)
def test_bad_configuration_names_the_key(home: Home, github: dict[str, Any], key: str) -> None:
    configure(home, github)
    with pytest.raises(ConfigError) as caught:
        load_github_webhook(home)
    assert caught.value.details["key"] == key
    assert SECRET not in str(caught.value)


def test_unknown_webhook_provider_is_refused(home: Home) -> None:
    data = yaml.safe_load(home.config_path.read_text())
    data["webhooks"] = {"gitlub": {}}
    home.config_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"webhooks\.gitlub"):
        load_github_webhook(home)


def test_secret_file_must_be_private(home: Home) -> None:
    secret = home.path / "github.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    configure(home, {"secret_file": "github.secret", "actor": "github"})
    with pytest.raises(ConfigError, match="0600"):
        load_github_webhook(home)
    secret.chmod(0o600)
    hook = load_github_webhook(home)
    assert hook is not None
    assert hook.secret.matches(b"{}", sign(b"{}"))  # the trailing newline is not the secret


def test_the_key_may_come_from_the_environment(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    (home.keys_dir / "github.key").unlink()  # a server with no key file for the actor
    key = PrivateKey.generate()
    monkeypatch.setenv("OPSLEDGER_KEY", key.to_b64())
    monkeypatch.setenv("OPSLEDGER_ACTOR", "github")
    hook = load_github_webhook(home)
    assert hook is not None and hook.signer.key.key_id == key.key_id
    monkeypatch.setenv("OPSLEDGER_ACTOR", "admin")
    with pytest.raises(ConfigError, match="'admin'"):
        load_github_webhook(home)


def test_the_secret_is_never_printed(webhook: GithubWebhook, api: TestClient) -> None:
    assert SECRET not in repr(webhook)
    assert SECRET not in repr(webhook.secret)
    assert SECRET not in str(vars(webhook.signer))
    listing = api.get("/api/v1/transactions", params={"limit": 1000}).text
    assert SECRET not in listing


# -- the pure mapping --------------------------------------------------------------------


def test_map_push_directly() -> None:
    evidence = map_push(fixture("push"))
    assert isinstance(evidence, Evidence)
    assert evidence.type == "code.pushed"
    assert evidence.subject == parse_subject("repo:acme/shop")
    assert evidence.time == dt.datetime(2026, 3, 2, 9, 53, 20, tzinfo=dt.UTC)
    assert [c["id"][:7] for c in evidence.body["commits"]] == ["9f1c2e4", "4e8a1f0"]


def test_map_push_of_a_deleted_branch_has_no_commits() -> None:
    payload = fixture("push")
    payload.update(deleted=True, commits=[], head_commit=None, after="0" * 40)
    evidence = map_push(payload)
    assert evidence.body["commits"] == []
    assert evidence.body["deleted"] is True


def test_map_push_falls_back_to_the_head_commit_time() -> None:
    payload = fixture("push")
    del payload["repository"]["pushed_at"]
    assert map_push(payload).time == dt.datetime(2026, 3, 1, 23, 4, 9, tzinfo=dt.UTC)
    payload["head_commit"] = None
    with pytest.raises(InvalidInput, match="pushed_at"):
        map_push(payload)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.pop("repository"), "repository"),
        (lambda p: p["repository"].pop("full_name"), "repository.full_name"),
        (lambda p: p.update(commits={"a": 1}), "commits"),
        (lambda p: p["commits"][1].update(author={"email": "x@y"}), "commits[1].author"),
        (lambda p: p["commits"][0].update(timestamp="yesterday"), "commits[0].timestamp"),
        (lambda p: p["commits"][0].update(timestamp="2026-03-02T10:00:00"), "commits[0].timestamp"),
        (lambda p: p["commits"][0].pop("id"), "commits[0].id"),
    ],
)
def test_map_push_names_the_missing_field(change: Callable[[Any], Any], field: str) -> None:
    payload = fixture("push")
    change(payload)
    with pytest.raises(InvalidInput) as caught:
        map_push(payload)
    assert caught.value.details["field"] == field


@pytest.mark.parametrize(
    ("conclusion", "status", "exit_code"),
    [
        ("success", "success", 0),
        ("neutral", "success", 0),
        ("failure", "failure", 1),
        ("cancelled", "failure", 1),
        ("timed_out", "failure", 1),
        ("action_required", "failure", 1),
        ("startup_failure", "failure", 1),
        (None, "failure", 1),
    ],
)
def test_map_workflow_run_conclusions(conclusion: str | None, status: str, exit_code: int) -> None:
    payload = fixture("workflow_run")
    payload["workflow_run"]["conclusion"] = conclusion
    evidence = map_workflow_run(payload)
    assert isinstance(evidence, Evidence)
    assert (evidence.body["status"], evidence.body["exit_code"]) == (status, exit_code)
    assert evidence.body["conclusion"] == conclusion


def test_map_workflow_run_ignores_skipped_and_unfinished_runs() -> None:
    payload = fixture("workflow_run")
    payload["workflow_run"]["conclusion"] = "skipped"
    assert isinstance(map_workflow_run(payload), Ignored)
    payload["action"] = "requested"
    assert map_workflow_run(payload) == Ignored(
        "workflow_run", "action 'requested' is not recorded"
    )


@pytest.mark.parametrize(
    ("state", "tx_type", "status"),
    [
        ("in_progress", "deploy.started", "started"),
        ("success", "deploy.finished", "success"),
        ("failure", "deploy.finished", "failure"),
        ("error", "deploy.finished", "failure"),
        ("pending", "note", None),
        ("queued", "note", None),
        ("inactive", "note", None),
    ],
)
def test_map_deployment_status_states(state: str, tx_type: str, status: str | None) -> None:
    payload = fixture("deployment_status")
    payload["deployment_status"]["state"] = state
    evidence = map_deployment_status(payload)
    assert isinstance(evidence, Evidence)
    assert evidence.type == tx_type
    assert evidence.body.get("status") == status
    assert "missing" not in evidence.body


def test_map_deployment_status_defaults_and_missing_fields() -> None:
    payload = fixture("deployment_status")
    payload["deployment"]["payload"] = {"digest": DIGEST, "strategy": "canary"}
    evidence = map_deployment_status(payload)
    assert evidence.body["service"] == "shop"  # the repository's name
    assert evidence.body["version"] == payload["deployment"]["sha"]
    payload["deployment"]["payload"] = {"digest": "sha256:short", "strategy": "yolo"}
    note = map_deployment_status(payload)
    assert note.type == "note" and note.body["missing"] == ["digest", "strategy"]
    payload["deployment"]["payload"] = "not an object"
    assert map_deployment_status(payload).body["missing"] == ["digest", "strategy"]


def test_map_pull_request_actions() -> None:
    payload = fixture("pull_request")
    for action in ("opened", "reopened", "synchronize", "ready_for_review"):
        payload["action"] = action
        evidence = map_pull_request(payload)
        assert isinstance(evidence, Evidence) and evidence.body["action"] == action
    payload["action"] = "closed"
    payload["pull_request"]["merged"] = False
    closed = map_pull_request(payload)
    assert isinstance(closed, Evidence)
    assert closed.body["text"] == "pull request acme/shop#42 closed"
    assert closed.body["merged"] is False
    payload["action"] = "assigned"
    assert isinstance(map_pull_request(payload), Ignored)


def test_map_event_ignores_unknown_events() -> None:
    assert map_event("star", {}) == Ignored("star", "event 'star' is not recorded")
    assert set(MAPPERS) == {"push", "pull_request", "workflow_run", "deployment_status"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-02T10:52:31+01:00", dt.datetime(2026, 3, 2, 9, 52, 31, tzinfo=dt.UTC)),
        ("2026-03-02T09:52:31Z", dt.datetime(2026, 3, 2, 9, 52, 31, tzinfo=dt.UTC)),
        (1772445200, dt.datetime(2026, 3, 2, 9, 53, 20, tzinfo=dt.UTC)),
    ],
)
def test_parse_time(value: Any, expected: dt.datetime) -> None:
    assert parse_time(value, "t") == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        -1,
        10**20,
        1.5,
        "",
        "2026-03-02",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_parse_time_refuses(value: Any) -> None:
    with pytest.raises(InvalidInput):
        parse_time(value, "t")


def test_stale_check_is_by_the_configured_age(webhook: GithubWebhook, clock: FixedClock) -> None:
    webhook.check_fresh(NOW - dt.timedelta(hours=23, minutes=59))
    with pytest.raises(StaleDelivery):
        webhook.check_fresh(NOW - dt.timedelta(hours=24, seconds=1))


# -- hypothesis: nothing random gets a 5xx, nothing unsigned gets in -----------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _mutations(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A fixture with a few of its fields (at any depth) replaced by random JSON."""
    event = draw(st.sampled_from(sorted(MAPPERS)))
    payload = copy.deepcopy(fixture(event))
    for _ in range(draw(st.integers(0, 3))):
        target: Any = payload
        while isinstance(target, dict | list) and target and draw(st.booleans()):
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            child = target[draw(st.sampled_from(keys))]
            if not isinstance(child, dict | list) or not child:
                break
            target = child
        if isinstance(target, dict) and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(_json)
    return event, payload


@st.composite
def signed_deliveries(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.booleans()):
        event, payload = _mutations(draw)
        return event, json.dumps(payload).encode()
    event = draw(st.sampled_from([*sorted(MAPPERS), "ping", "issues"]))
    return event, json.dumps(draw(_json)).encode()


FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@FUZZ
@given(
    body=st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()),
    signature=st.none()
    | st.text(st.characters(blacklist_categories=["Cc"]), max_size=80).map(str.encode)
    | st.from_regex(rb"sha256=[0-9a-f]{64}", fullmatch=True),
    event=st.sampled_from(["push", "pull_request", "workflow_run", "deployment_status", "ping"]),
)
def test_random_unsigned_bodies_get_401_and_change_nothing(
    api: TestClient, body: bytes, signature: bytes | None, event: str
) -> None:
    before = head(api)
    headers: dict[str, str | bytes] = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
    }
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature  # any bytes, as a hostile sender would
    response = api.post(URL, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert head(api) == before


@FUZZ
@given(delivery=signed_deliveries())
def test_validly_signed_random_payloads_never_get_a_5xx(
    deliver: Deliver, delivery: tuple[str, bytes]
) -> None:
    kind, raw = delivery
    response = deliver(kind, raw)
    event(f"{kind}: {response.status_code}")  # see --hypothesis-show-statistics
    assert response.status_code in {200, 201, 202, 400, 409}, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["code"]
