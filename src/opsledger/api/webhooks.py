"""``POST /api/v1/webhooks/github``: GitHub deliveries become signed ledger evidence.

The route is always mounted and answers 404 ``not_found`` until a server enables it
with ``enable_github_webhook(app, load_github_webhook(home))``: ``create_app`` knows
only its client, while the settings (secret, service key, ``webhooks.db``) belong to
the home. The order of checks is the order of trust:

    not configured                            404 not_found
    body over 25 MiB (GitHub's own cap)       413 payload_too_large
    no X-Hub-Signature-256                    401 signature_missing    nothing recorded
    signature does not match the raw body     401 signature_invalid    nothing recorded
    no/odd X-GitHub-Event, X-GitHub-Delivery  400 invalid_input
    form-encoded body, not a JSON object      400 invalid_input
    event or action we do not record          202 {"ignored": event, "reason": ...}
    payload lacks a field the mapping needs   400 invalid_input / schema_error
    delivery id seen before                   200 {"duplicate": true, "tx_id": ...}
    payload timestamp older than max age      409 stale_delivery
    same delivery being recorded right now    409 delivery_in_progress
    recorded                                  201 {"recorded": type, "tx_id", ...}

Nothing is parsed before the signature is checked, so an unsigned sender learns nothing
but 401. The secret is compared in constant time and never appears in an answer or log.

The mapping from GitHub payloads to transactions is pure (``map_event`` and one
function per event, each ``payload -> Evidence | Ignored``) so it is tested without
HTTP; ``docs/webhooks.md`` documents it field by field.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel

from opsledger.api.errors import ERROR_RESPONSES, ErrorResponse, error_response
from opsledger.api.routes import read_body
from opsledger.app import GithubWebhook
from opsledger.app.webhooks import Recorded
from opsledger.client.local import LocalClient
from opsledger.core import InvalidInput, NotFound, OpsledgerError, Subject, format_ts, parse_json
from opsledger.core.schemas import DIGEST_PATTERN

if TYPE_CHECKING:
    from opsledger.api.app import ApiMetrics

__all__ = [
    "MAPPERS",
    "MAX_WEBHOOK_BYTES",
    "RECORDED_PULL_REQUEST_ACTIONS",
    "Evidence",
    "Ignored",
    "SignatureMissing",
    "SignatureRejected",
    "WebhookDuplicateOut",
    "WebhookIgnoredOut",
    "WebhookRecordedOut",
    "build_webhook_router",
    "enable_github_webhook",
    "map_deployment_status",
    "map_event",
    "map_pull_request",
    "map_push",
    "map_workflow_run",
    "parse_time",
]

logger = logging.getLogger("opsledger.webhooks")

MAX_WEBHOOK_BYTES = 25 << 20
"""GitHub caps webhook payloads at 25 MB and drops bigger ones itself."""
RECORDED_PULL_REQUEST_ACTIONS = frozenset(
    {"opened", "reopened", "synchronize", "ready_for_review", "closed"}
)
"""Actions that change what may be merged; labels, assignees and reviews requested do not
and would only add noise to a ledger that keeps everything forever."""

_STATE_ATTR = "github_webhook"
_EVENT = re.compile(r"^[a-z][a-z_]{0,63}$")
_DELIVERY = re.compile(r"^[A-Za-z0-9-]{1,128}$")
_DIGEST = re.compile(DIGEST_PATTERN)
_STRATEGIES = frozenset({"rolling", "blue-green", "canary", "recreate"})
_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z


class SignatureRejected(InvalidInput):
    """The delivery's ``X-Hub-Signature-256`` does not match its body (HTTP 401)."""

    code = "signature_invalid"


class SignatureMissing(SignatureRejected):
    """The delivery carries no ``X-Hub-Signature-256`` at all (HTTP 401)."""

    code = "signature_missing"


# -- the pure mapping --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """One transaction to record for a delivery; ``time`` is when GitHub says the event
    happened, checked against the configured max age."""

    type: str
    subject: Subject
    body: dict[str, Any]
    time: _dt.datetime


@dataclass(frozen=True, slots=True)
class Ignored:
    """A delivery that is authentic but records nothing, and why."""

    event: str
    reason: str


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _mapping(obj: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        field = _field(where, key)
        raise InvalidInput(f"{field} must be an object", field=field)
    return value


def _string(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        field = _field(where, key)
        raise InvalidInput(f"{field} must be a non-empty string", field=field)
    return value


def _integer(obj: Mapping[str, Any], key: str, where: str = "") -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        field = _field(where, key)
        raise InvalidInput(f"{field} must be an integer", field=field)
    return value


def _extras(obj: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, Any]:
    """Context copied as is when present with a scalar JSON type: ``{payload key: body
    key}``. Context is optional, so an odd value is left out rather than refused."""
    out: dict[str, Any] = {}
    for key, name in keys.items():
        value = obj.get(key)
        if isinstance(value, str | bool | int) and value != "":
            out[name] = value
    return out


def _login(obj: Mapping[str, Any], key: str) -> str | None:
    user = obj.get(key)
    if isinstance(user, dict):
        login = user.get("login") or user.get("name")
        if isinstance(login, str) and login:
            return login
    return None


def parse_time(value: Any, field: str) -> _dt.datetime:
    """A GitHub timestamp as aware UTC: ISO 8601 text with an offset, or (``pushed_at``
    of push events) integer seconds since the epoch."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= _MAX_EPOCH:
                raise ValueError("out of range")
            return _dt.datetime.fromtimestamp(value, _dt.UTC)
        if isinstance(value, str):
            moment = _dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                raise ValueError("no time zone")
            return moment.astimezone(_dt.UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidInput(f"{field} is not a timestamp: {exc}", field=field) from exc
    raise InvalidInput(f"{field} is not a timestamp", field=field)


def _commit(commit: Any, where: str) -> dict[str, str]:
    """``{id, author, time}``: the author's GitHub username when GitHub knows it (it is
    stable), else the name from the commit; the time normalised to UTC."""
    if not isinstance(commit, dict):
        raise InvalidInput(f"{where} must be an object", field=where)
    author = _mapping(commit, "author", where)
    name = author.get("username") or author.get("name")
    if not isinstance(name, str) or not name:
        field = f"{where}.author"
        raise InvalidInput(f"{field} has neither username nor name", field=field)
    time = parse_time(commit.get("timestamp"), f"{where}.timestamp")
    return {"id": _string(commit, "id", where), "author": name, "time": format_ts(time)}


def map_push(payload: Mapping[str, Any]) -> Evidence:
    """``push`` → ``code.pushed`` about ``repo:<owner/name>``.

    The freshness time is ``repository.pushed_at`` (when GitHub received the push), not
    ``head_commit.timestamp``: commit times come from the author's clock and an old
    commit pushed today is not a stale delivery. ``head_commit.timestamp`` is the
    fallback when ``pushed_at`` is absent. A branch deletion records no commits."""
    repository = _mapping(payload, "repository")
    repo = _string(repository, "full_name", "repository")
    raw_commits = payload.get("commits", [])
    if not isinstance(raw_commits, list):
        raise InvalidInput("commits must be an array", field="commits")
    commits = [_commit(c, f"commits[{i}]") for i, c in enumerate(raw_commits)]
    if repository.get("pushed_at") is not None:
        time = parse_time(repository["pushed_at"], "repository.pushed_at")
    elif isinstance(payload.get("head_commit"), dict):
        time = parse_time(payload["head_commit"].get("timestamp"), "head_commit.timestamp")
    else:
        raise InvalidInput(
            "push payload has neither repository.pushed_at nor head_commit.timestamp",
            field="repository.pushed_at",
        )
    body: dict[str, Any] = {
        "repo": repo,
        "ref": _string(payload, "ref"),
        "commits": commits,
        "source": "github",
        **_extras(
            payload,
            {
                "before": "before",
                "after": "after",
                "created": "created",
                "deleted": "deleted",
                "forced": "forced",
                "compare": "compare",
            },
        ),
    }
    pusher = payload.get("pusher")
    if isinstance(pusher, dict) and isinstance(pusher.get("name"), str) and pusher["name"]:
        body["pusher"] = pusher["name"]
    return Evidence("code.pushed", Subject("repo", repo), body, time)


def map_pull_request(payload: Mapping[str, Any]) -> Evidence | Ignored:
    """``pull_request`` → ``note`` about ``repo:<owner/name>`` with structured fields
    ``{action, number, head_sha, merged}`` (there is no pull-request type: a note is
    the honest record until one exists). Only ``RECORDED_PULL_REQUEST_ACTIONS``."""
    action = _string(payload, "action")
    if action not in RECORDED_PULL_REQUEST_ACTIONS:
        return Ignored("pull_request", f"action {action!r} is not recorded")
    repo = _string(_mapping(payload, "repository"), "full_name", "repository")
    pr = _mapping(payload, "pull_request")
    number = _integer(pr, "number", "pull_request")
    head_sha = _string(_mapping(pr, "head", "pull_request"), "sha", "pull_request.head")
    merged = pr.get("merged") is True
    time = parse_time(pr.get("updated_at"), "pull_request.updated_at")
    state = " (merged)" if merged else ""
    body: dict[str, Any] = {
        "text": f"pull request {repo}#{number} {action}{state}",
        "source": "github",
        "event": "pull_request",
        "repo": repo,
        "action": action,
        "number": number,
        "head_sha": head_sha,
        "merged": merged,
        **_extras(
            pr,
            {
                "title": "title",
                "html_url": "html_url",
                "merge_commit_sha": "merge_commit_sha",
                "merged_at": "merged_at",
            },
        ),
    }
    base = pr.get("base")
    if isinstance(base, dict) and isinstance(base.get("ref"), str):
        body["base_ref"] = base["ref"]
    author = _login(pr, "user")
    if author:
        body["author"] = author
    return Evidence("note", Subject("repo", repo), body, time)


def map_workflow_run(payload: Mapping[str, Any]) -> Evidence | Ignored:
    """``workflow_run`` (action ``completed``) → ``job.finished`` about
    ``repo:<owner/name>``: ``run`` is the run id, ``job`` the workflow's name.

    GitHub reports a conclusion, not a process exit code: ``status`` is ``success`` for
    ``success`` and ``neutral`` (GitHub counts both as passing), ``exit_code`` 0 then and
    1 otherwise; the body keeps GitHub's own ``conclusion``. ``skipped`` runs did
    nothing and are ignored; ``requested``/``in_progress`` deliveries too."""
    action = _string(payload, "action")
    if action != "completed":
        return Ignored("workflow_run", f"action {action!r} is not recorded")
    repo = _string(_mapping(payload, "repository"), "full_name", "repository")
    run = _mapping(payload, "workflow_run")
    conclusion = run.get("conclusion")
    if conclusion == "skipped":
        return Ignored("workflow_run", "a skipped run did nothing")
    if conclusion is not None and not isinstance(conclusion, str):
        raise InvalidInput(
            "workflow_run.conclusion must be a string", field="workflow_run.conclusion"
        )
    name = run.get("name")
    job = name if isinstance(name, str) and name else _string(run, "path", "workflow_run")
    success = conclusion in ("success", "neutral")
    body: dict[str, Any] = {
        "run": str(_integer(run, "id", "workflow_run")),
        "job": job,
        "status": "success" if success else "failure",
        "exit_code": 0 if success else 1,
        "conclusion": conclusion,
        "head_sha": _string(run, "head_sha", "workflow_run"),
        "source": "github",
        "repo": repo,
        **_extras(
            run,
            {
                "html_url": "html_url",
                "head_branch": "head_branch",
                "run_number": "run_number",
                "run_attempt": "run_attempt",
                "workflow_id": "workflow_id",
                "path": "workflow_path",
                "event": "trigger",
            },
        ),
    }
    time = parse_time(run.get("updated_at"), "workflow_run.updated_at")
    return Evidence("job.finished", Subject("repo", repo), body, time)


_DEPLOY_STATES = {
    "in_progress": "started",
    "success": "success",
    "failure": "failure",
    "error": "failure",
}


def map_deployment_status(payload: Mapping[str, Any]) -> Evidence:
    """``deployment_status`` → ``deploy.started``/``deploy.finished`` only when the
    deployment's own ``payload`` (set by whoever created the deployment) supplies what
    GitHub cannot know: the artifact ``digest`` (``sha256:<hex>``) and the ``strategy``;
    ``service`` defaults to the repository's name, ``version`` to the deployed sha.
    Then ``in_progress`` → started, ``success`` → finished/success, ``failure`` and
    ``error`` → finished/failure, about ``artifact:<digest>`` like other artifact
    evidence. Anything else (no digest, or ``pending``/``queued``/``inactive``) is a
    ``note`` about ``repo:<owner/name>`` whose ``missing`` lists what was lacking."""
    repository = _mapping(payload, "repository")
    repo = _string(repository, "full_name", "repository")
    status = _mapping(payload, "deployment_status")
    deployment = _mapping(payload, "deployment")
    state = _string(status, "state", "deployment_status")
    environment = status.get("environment") or deployment.get("environment")
    if not isinstance(environment, str) or not environment:
        raise InvalidInput(
            "deployment_status.environment must be a non-empty string",
            field="deployment_status.environment",
        )
    sha = _string(deployment, "sha", "deployment")
    deployment_id = _integer(deployment, "id", "deployment")
    stamp = status.get("updated_at") or status.get("created_at")
    time = parse_time(stamp, "deployment_status.updated_at")
    context: dict[str, Any] = {
        "source": "github",
        "repo": repo,
        "deployment_id": deployment_id,
        "state": state,
        "sha": sha,
        **_extras(deployment, {"ref": "ref", "task": "task"}),
        **_extras(
            status,
            {"target_url": "target_url", "log_url": "log_url", "environment_url": "url"},
        ),
    }
    extra = deployment.get("payload")
    extra = extra if isinstance(extra, dict) else {}
    digest, strategy = extra.get("digest"), extra.get("strategy")
    missing = [
        name
        for name, ok in (
            ("digest", isinstance(digest, str) and _DIGEST.match(digest) is not None),
            ("strategy", strategy in _STRATEGIES),
        )
        if not ok
    ]
    if not missing and state in _DEPLOY_STATES:
        outcome = _DEPLOY_STATES[state]
        service = extra.get("service")
        version = extra.get("version")
        body = {
            "service": service
            if isinstance(service, str) and service
            else _string(repository, "name", "repository"),
            "environment": environment,
            "version": version if isinstance(version, str) and version else sha,
            "digest": digest,
            "strategy": strategy,
            "status": outcome,
            "commits": [sha],
            **context,
        }
        tx_type = "deploy.started" if outcome == "started" else "deploy.finished"
        return Evidence(tx_type, Subject("artifact", str(digest)), body, time)
    text = f"deployment {deployment_id} of {repo}@{sha[:12]} to {environment}: {state}"
    note = {"text": text, "event": "deployment_status", "environment": environment, **context}
    if missing:
        note["missing"] = missing
    return Evidence("note", Subject("repo", repo), note, time)


MAPPERS: dict[str, Callable[[Mapping[str, Any]], Evidence | Ignored]] = {
    "push": map_push,
    "pull_request": map_pull_request,
    "workflow_run": map_workflow_run,
    "deployment_status": map_deployment_status,
}


def map_event(event: str, payload: Mapping[str, Any]) -> Evidence | Ignored:
    """The transaction for one GitHub event, or why it records nothing. Raises
    ``InvalidInput`` naming the field when a handled event lacks what it needs."""
    mapper = MAPPERS.get(event)
    if mapper is None:
        return Ignored(event, f"event {event!r} is not recorded")
    return mapper(payload)


# -- the route ---------------------------------------------------------------------------


class WebhookRecordedOut(BaseModel):
    recorded: str
    tx_id: str
    height: int
    leaf_index: int
    delivery: str


class WebhookDuplicateOut(BaseModel):
    duplicate: bool
    tx_id: str


class WebhookIgnoredOut(BaseModel):
    ignored: str
    reason: str


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_OPENAPI = {
    "parameters": [
        _header("X-GitHub-Event", "push, pull_request, workflow_run, deployment_status, ..."),
        _header("X-GitHub-Delivery", "The delivery's GUID: repeats are answered, not recorded"),
        _header("X-Hub-Signature-256", "sha256=<hex HMAC-SHA256 of the raw body>"),
    ],
    "requestBody": {
        "required": True,
        "description": "The GitHub event payload (content type application/json)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": WebhookDuplicateOut, "description": "Delivery seen before; nothing new"},
    202: {"model": WebhookIgnoredOut, "description": "Authentic, but records nothing"},
    401: {"model": ErrorResponse, "description": "Signature missing or wrong; nothing recorded"},
    404: {"model": ErrorResponse, "description": "GitHub webhooks are not configured"},
    409: {
        "model": ErrorResponse,
        "description": "Stale delivery (stale_delivery) or one being recorded"
        " (delivery_in_progress)",
    },
    **{status: ERROR_RESPONSES[status] for status in (400, 413, 422, 500, 503)},
}


def enable_github_webhook(app: FastAPI, webhook: GithubWebhook | None) -> None:
    """Turn the route on for ``app`` (None turns it off): the server passes
    ``load_github_webhook(home)`` at start, tests their own settings."""
    setattr(app.state, _STATE_ATTR, webhook)


def _headers(request: Request) -> tuple[str, str]:
    event = request.headers.get("x-github-event", "")
    if not _EVENT.match(event):
        raise InvalidInput("X-GitHub-Event is missing or malformed", field="X-GitHub-Event")
    delivery = request.headers.get("x-github-delivery", "")
    if not _DELIVERY.match(delivery):
        raise InvalidInput("X-GitHub-Delivery is missing or malformed", field="X-GitHub-Delivery")
    return event, delivery


def _payload(request: Request, raw: bytes) -> Mapping[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise InvalidInput(
            "set the webhook's content type to application/json in GitHub",
            field="content-type",
        )
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        raise InvalidInput("the payload must be a JSON object", field="body")
    return payload


def build_webhook_router(client: LocalClient, metrics: ApiMetrics) -> APIRouter:
    """The webhook route bound to ``client``; its counter goes into the app's registry."""
    router = APIRouter(prefix="/api/v1")
    deliveries = Counter(
        "opsledger_webhook_deliveries",
        "Webhook deliveries by provider and outcome (recorded, duplicate, ignored, or an"
        " error code such as signature_invalid)",
        ["provider", "outcome"],
        registry=metrics.registry,
    )

    def verify(hook: GithubWebhook, request: Request, raw: bytes) -> None:
        signature = request.headers.get("x-hub-signature-256")
        if signature is None:
            raise SignatureMissing("X-Hub-Signature-256 is missing: set the webhook's secret")
        if not hook.secret.matches(raw, signature):
            logger.warning(
                "github delivery %r: X-Hub-Signature-256 does not match (wrong secret?)",
                request.headers.get("x-github-delivery", "")[:128],
            )
            raise SignatureRejected("X-Hub-Signature-256 does not match the body")

    async def handle(request: Request) -> JSONResponse:
        hook: GithubWebhook | None = getattr(request.app.state, _STATE_ATTR, None)
        if hook is None:
            raise NotFound("GitHub webhooks are not configured", field="webhooks.github")
        raw = await read_body(request, MAX_WEBHOOK_BYTES)
        try:
            verify(hook, request, raw)
        except SignatureRejected as exc:
            deliveries.labels("github", exc.code).inc()
            return error_response(401, exc.to_dict())
        event, delivery = _headers(request)
        if event not in MAPPERS:
            deliveries.labels("github", "ignored").inc()
            return JSONResponse(
                {"ignored": event, "reason": f"event {event!r} is not recorded"}, status_code=202
            )
        mapped = map_event(event, _payload(request, raw))
        if isinstance(mapped, Ignored):
            deliveries.labels("github", "ignored").inc()
            return JSONResponse({"ignored": mapped.event, "reason": mapped.reason}, status_code=202)
        result: Recorded = await run_in_threadpool(
            hook.record,
            client,
            delivery=delivery,
            event=event,
            event_time=mapped.time,
            tx_type=mapped.type,
            subject=mapped.subject,
            body=mapped.body,
        )
        if result.receipt is None:
            deliveries.labels("github", "duplicate").inc()
            return JSONResponse({"duplicate": True, "tx_id": result.tx_id})
        metrics.accepted.inc()
        deliveries.labels("github", "recorded").inc()
        return JSONResponse(
            {"recorded": mapped.type, **result.receipt.to_dict(), "delivery": delivery},
            status_code=201,
        )

    @router.post(
        "/webhooks/github",
        summary="Receive a GitHub webhook delivery",
        description="Records push, pull_request, workflow_run and deployment_status events"
        " as transactions signed by the configured service identity, once per delivery id."
        " The body must be signed (X-Hub-Signature-256) with the shared secret.",
        status_code=201,
        response_model=WebhookRecordedOut,
        responses=_RESPONSES,
        openapi_extra=_OPENAPI,
        tags=["webhooks"],
    )
    async def github_webhook(request: Request) -> JSONResponse:
        try:
            return await handle(request)
        except OpsledgerError as exc:
            if not isinstance(exc, SignatureRejected):
                deliveries.labels("github", exc.code).inc()
            raise

    return router
