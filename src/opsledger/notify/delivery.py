"""Deliver notifications (a failed verdict, say) to webhooks and Slack, off the hot path.

Invariants:

- ``Notifier.notify`` never blocks and never raises: it appends to a bounded per-target
  queue and returns. When a queue is full the oldest item is dropped, with a warning and
  a ``dropped`` line in the delivery log. Whatever happens to a notification, the ledger
  write that caused it has already happened and is not affected.
- One worker thread per target, so a dead or slow target delays only its own queue.
- A delivery is retried on connection errors, timeouts, 5xx and 429, with exponential
  backoff and jitter (and ``Retry-After`` honoured up to the cap), at most
  ``max_attempts`` times; any other status is a permanent failure. Redirects are not
  followed (a webhook that moved must be reconfigured, not guessed).
- Every attempt is logged (structlog) and appended as one JSON line to the delivery log
  (``<home>/notifications.jsonl``): ts, delivery id, target, kind, event, attempt,
  outcome, status, error, duration_ms. Logs carry the target's redacted URL only: no
  credentials, query string or fragment, and for Slack no path secret; headers are never
  logged.
- ``close(timeout)`` stops intake, drains the queues, and after the timeout abandons what
  is left (logged as ``abandoned``).
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import structlog

from opsledger.core import Clock, ConfigError, InvalidInput, SystemClock, format_ts

__all__ = [
    "DELIVERY_LOG",
    "Channel",
    "Notification",
    "Notifier",
    "Outcome",
    "Severity",
    "WebhookTarget",
    "load_notify_targets",
    "post_json",
    "read_delivery_log",
    "redact_url",
    "slack_payload",
    "verdict_notification",
    "webhook_payload",
]

DELIVERY_LOG = "notifications.jsonl"
"""The delivery log's file name inside a ledger home."""

Severity = Literal["info", "warning", "error", "critical"]
_SEVERITIES = ("info", "warning", "error", "critical")
_SLACK_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "error": ":x:",
    "critical": ":rotating_light:",
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Notification:
    """Something a person should hear about. ``fields`` are short facts (name → value);
    ``links`` are label → URL (the verdict in the explorer, the run's logs)."""

    event: str
    title: str
    text: str = ""
    severity: Severity = "error"
    fields: Mapping[str, str] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)
    key: str = ""
    """What identifies the thing notified about across notifications (an alert's
    fingerprint): PagerDuty's ``dedup_key``, the ledger's record of who was told."""
    refs: tuple[str, ...] = ()
    """Alert fingerprints this notification speaks for (a group has several)."""

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event:
            raise InvalidInput("a notification needs an event name", field="event")
        if not isinstance(self.title, str) or not self.title:
            raise InvalidInput("a notification needs a title", field="title")
        if self.severity not in _SEVERITIES:
            raise InvalidInput(
                f"severity must be one of {', '.join(_SEVERITIES)}, got {self.severity!r}",
                field="severity",
            )
        object.__setattr__(self, "fields", MappingProxyType({**self.fields}))
        object.__setattr__(self, "links", MappingProxyType({**self.links}))


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """Our own JSON shape, for receivers that are ours or generic."""
    return {
        "source": "opsledger",
        "event": notification.event,
        "title": notification.title,
        "text": notification.text,
        "severity": notification.severity,
        "fields": {str(k): str(v) for k, v in notification.fields.items()},
        "links": [{"label": k, "url": v} for k, v in notification.links.items()],
    }


def _mrkdwn(text: str) -> str:
    """Slack's mrkdwn needs exactly these three escaped; the rest is literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(notification: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook payload: ``text`` (the fallback shown in notifications)
    and Block Kit ``blocks``, cut to Slack's limits (header 150 chars, section 3000, at
    most 10 fields of 2000, at most 5 link buttons)."""
    n = notification
    emoji = _SLACK_EMOJI[n.severity]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(n.title, 150)}},
    ]
    if n.text:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_mrkdwn(n.text), 3000)}}
        )
    if n.fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _cut(f"*{_mrkdwn(k)}*\n{_mrkdwn(str(v))}", 2000)}
                    for k, v in list(n.fields.items())[:10]
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"{emoji} *{n.severity}* · `{_mrkdwn(n.event)}`"}
            ],
        }
    )
    if n.links:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": _cut(label, 75)},
                        "url": url,
                    }
                    for label, url in list(n.links.items())[:5]
                ],
            }
        )
    fallback = f"{emoji} [{n.severity.upper()}] {_mrkdwn(n.title)}"
    return {"text": _cut(fallback, 3000), "blocks": blocks}


def redact_url(url: str, *, kind: str = "webhook") -> str:
    """The URL as it may appear in logs: scheme, host, port and path, without userinfo,
    query string or fragment. For Slack the path *is* the secret, so only its first
    segment is kept (``https://hooks.slack.com/services/***``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    path = parts.path
    if kind == "slack":
        first = path.strip("/").split("/", 1)[0]
        path = f"/{first}/***" if first else "/***"
    return f"{parts.scheme}://{netloc}{path}"


@dataclass(frozen=True)
class WebhookTarget:
    """Where notifications go. ``kind="slack"`` sends Slack's payload, ``"webhook"`` ours.
    ``headers`` (an ``Authorization``, say) are sent but never logged or shown in repr;
    ``name`` labels the target in logs next to its redacted URL."""

    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, kw_only=True, repr=False)
    kind: Literal["webhook", "slack"] = field(default="webhook", kw_only=True)
    name: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.kind not in ("webhook", "slack"):
            raise InvalidInput(f"kind must be webhook or slack, got {self.kind!r}", field="kind")
        try:
            parts = urlsplit(self.url) if isinstance(self.url, str) else None
            host = parts.hostname if parts else None
        except ValueError:
            host = None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise InvalidInput("url must be an http(s) URL with a host", field="url")
        for name, value in self.headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise InvalidInput(f"invalid header name {name!r}", field="headers")
            if not isinstance(value, str) or "\r" in value or "\n" in value:
                raise InvalidInput(f"header {name} must be a one-line string", field="headers")
        object.__setattr__(self, "headers", MappingProxyType({**self.headers}))

    @property
    def display(self) -> str:
        """The redacted URL: safe for logs and the delivery log."""
        return redact_url(self.url, kind=self.kind)

    def payload(self, notification: Notification) -> dict[str, Any]:
        if self.kind == "slack":
            return slack_payload(notification)
        return webhook_payload(notification)

    def __repr__(self) -> str:
        label = f", name={self.name!r}" if self.name else ""
        return f"WebhookTarget({self.display!r}, kind={self.kind!r}{label})"

    def send(self, notification: Notification, http: httpx.Client) -> Outcome:
        headers = {"User-Agent": "opsledger-notify", **self.headers}
        return post_json(self, self.url, self.payload(notification), headers, http)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery attempt's result, whatever the channel (HTTP status, SMTP code)."""

    ok: bool
    retryable: bool = False
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


class Channel(Protocol):
    """Something a notification can be sent to: a webhook, Slack, PagerDuty, email."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def display(self) -> str:
        """Where it goes, safe to log (no secret)."""
        ...

    def send(self, notification: Notification, http: httpx.Client) -> Outcome: ...


def post_json(
    target: Channel,
    url: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    http: httpx.Client,
    *,
    secrets: Sequence[str] = (),
) -> Outcome:
    """POST ``payload``; 2xx is delivered, connection errors, 5xx and 429 are retried."""
    try:
        response = http.post(url, json=payload, headers=dict(headers), follow_redirects=False)
    except httpx.HTTPError as exc:
        return Outcome(False, True, error=_safe_error(exc, url, target, secrets))
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(True, status=status)
    return Outcome(
        False,
        status == 429 or status >= 500,
        status=status,
        error=f"HTTP {status}",
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


@dataclass(frozen=True, slots=True)
class _Item:
    delivery: str
    notification: Notification


class _Lane:
    """One target's queue and worker."""

    def __init__(self, target: Channel) -> None:
        self.target = target
        self.queue: collections.deque[_Item] = collections.deque()
        self.cond = threading.Condition()
        self.busy = False
        self.thread: threading.Thread | None = None


class Notifier:
    """Sends notifications to its targets from background threads (see module docstring).

    ``log_path`` is the delivery log (``home.path / DELIVERY_LOG``; None: structlog only).
    ``sleep``, ``monotonic``, ``clock`` and ``jitter`` are injectable for tests; the default
    sleep wakes early when ``close`` gives up. ``http`` is an ``httpx.Client`` to use
    (closed by its owner); by default the notifier makes and closes its own.
    """

    def __init__(
        self,
        targets: Sequence[Channel],
        *,
        log_path: Path | None = None,
        on_final: Callable[[Channel, Notification, str, int], None] | None = None,
        queue_size: int = 1000,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], object] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock | None = None,
        jitter: Callable[[], float] = random.random,
        logger: Any = None,
    ) -> None:
        if queue_size < 1 or max_attempts < 1 or backoff < 0 or max_backoff < 0:
            raise ConfigError(
                "queue_size and max_attempts must be >= 1, backoffs >= 0", key="notify"
            )
        self.log_path = log_path
        self.on_final = on_final
        self.queue_size = queue_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._abort = threading.Event()
        self._closed = threading.Event()
        self._sleep = sleep if sleep is not None else self._abort.wait
        self._monotonic = monotonic
        self._clock = clock or SystemClock()
        self._jitter = jitter
        self._log = logger if logger is not None else structlog.get_logger("opsledger.notify")
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._timeout = timeout
        self._file_lock = threading.Lock()
        self._lanes = [_Lane(target) for target in targets]
        for index, lane in enumerate(self._lanes):
            lane.thread = threading.Thread(
                target=self._work, args=(lane,), name=f"opsledger-notify-{index}", daemon=True
            )
            lane.thread.start()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def pending(self) -> int:
        """Deliveries waiting in the queues (not counting those in flight)."""
        total = 0
        for lane in self._lanes:
            with lane.cond:
                total += len(lane.queue)
        return total

    def notify(self, notification: Notification) -> None:
        """Queue ``notification`` for every target and return at once. Never raises."""
        try:
            self._enqueue(notification)
        except Exception as exc:  # a notification problem must never reach the caller
            self._log.error("notify.enqueue_failed", error=f"{type(exc).__name__}: {exc}")

    def _enqueue(self, notification: Notification) -> None:
        if self._closed.is_set():
            self._log.warning("notify.closed", notification=notification.event)
            return
        for lane in self._lanes:
            item = _Item(uuid.uuid4().hex[:16], notification)
            dropped: _Item | None = None
            with lane.cond:
                if len(lane.queue) >= self.queue_size:
                    dropped = lane.queue.popleft()
                lane.queue.append(item)
                lane.cond.notify()
            if dropped is not None:
                self._attempt_record(
                    lane.target, dropped, attempt=0, outcome="dropped", error="queue full"
                )

    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking notifications, deliver what is queued, wait at most ``timeout``
        seconds. Returns whether everything was drained; what was not is logged as
        ``abandoned`` and the workers stop after their current attempt."""
        self._closed.set()
        for lane in self._lanes:
            with lane.cond:
                lane.cond.notify_all()
        deadline = self._monotonic() + timeout
        drained = True
        for lane in self._lanes:
            assert lane.thread is not None  # started in __init__
            lane.thread.join(max(0.0, deadline - self._monotonic()))
            drained = drained and not lane.thread.is_alive()
        if not drained:
            self._abort.set()
            for lane in self._lanes:
                with lane.cond:
                    left = list(lane.queue)
                    lane.queue.clear()
                    lane.cond.notify_all()
                for item in left:
                    self._attempt_record(
                        lane.target, item, attempt=0, outcome="abandoned", error="closed"
                    )
        if self._own_http and drained:
            self._http.close()
        return drained

    # -- the worker --
    def _work(self, lane: _Lane) -> None:
        while True:
            with lane.cond:
                while not lane.queue and not self._closed.is_set():
                    lane.cond.wait()
                if not lane.queue or self._abort.is_set():
                    return
                item = lane.queue.popleft()
                lane.busy = True
            try:
                self._deliver(lane.target, item)
            except Exception as exc:  # keep the worker alive whatever one delivery does
                self._log.error(
                    "notify.worker_error",
                    target=lane.target.display,
                    delivery=item.delivery,
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                with lane.cond:
                    lane.busy = False

    def _deliver(self, target: Channel, item: _Item) -> None:
        for attempt in range(1, self.max_attempts + 1):
            if self._abort.is_set():
                self._attempt_record(
                    target, item, attempt=attempt, outcome="abandoned", error="closed"
                )
                return
            begin = self._monotonic()
            result = target.send(item.notification, self._http)
            duration_ms = max(0, int((self._monotonic() - begin) * 1000))
            if result.ok:
                self._attempt_record(
                    target,
                    item,
                    attempt=attempt,
                    outcome="delivered",
                    status=result.status,
                    duration_ms=duration_ms,
                )
                return
            if not result.retryable or attempt == self.max_attempts:
                self._attempt_record(
                    target,
                    item,
                    attempt=attempt,
                    outcome="failed",
                    status=result.status,
                    error=result.error,
                    duration_ms=duration_ms,
                )
                return
            delay = self._delay(attempt, result.retry_after)
            self._attempt_record(
                target,
                item,
                attempt=attempt,
                outcome="retry",
                status=result.status,
                error=result.error,
                duration_ms=duration_ms,
                retry_in=round(delay, 3),
            )
            self._sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Equal jitter: half of the exponential step fixed, half random, capped."""
        step = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        delay = step / 2 + self._jitter() * step / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    # -- the record of every attempt --
    def _attempt_record(
        self,
        target: Channel,
        item: _Item,
        *,
        attempt: int,
        outcome: str,
        status: int | None = None,
        error: str | None = None,
        duration_ms: int | None = None,
        retry_in: float | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "ts": format_ts(self._clock.now()),
            "delivery": item.delivery,
            "target": target.display,
            "kind": target.kind,
            "event": item.notification.event,
            "attempt": attempt,
            "outcome": outcome,
            "status": status,
            "error": error,
            "duration_ms": duration_ms,
        }
        if target.name:
            entry["name"] = target.name
        if retry_in is not None:
            entry["retry_in"] = retry_in
        # structlog's first argument is called ``event``: the notification's goes by
        # another name in log fields.
        fields = {k: v for k, v in entry.items() if k not in ("ts", "event")}
        fields["notification"] = entry["event"]
        if outcome == "delivered":
            self._log.info("notify.attempt", **fields)
        else:
            self._log.warning("notify.attempt", **fields)
        if outcome != "retry" and self.on_final is not None:
            try:
                self.on_final(target, item.notification, outcome, attempt)
            except Exception as exc:  # the hook must never stop deliveries
                self._log.error("notify.on_final_failed", error=f"{type(exc).__name__}: {exc}")
        if self.log_path is None:
            return
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n"
        try:
            with self._file_lock, self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            self._log.warning("notify.log_failed", path=str(self.log_path), error=str(exc))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the HTTP-date form is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _safe_error(exc: Exception, url: str, target: Channel, secrets: Sequence[str] = ()) -> str:
    message = str(exc).replace(url, target.display) or type(exc).__name__
    parts = urlsplit(url)
    slack_path = parts.path if target.kind == "slack" and len(parts.path) > 1 else ""
    for secret in (parts.query, parts.password, slack_path, *secrets):
        if secret:
            message = message.replace(secret, "***")
    return f"{type(exc).__name__}: {message}"[:500]


def read_delivery_log(path: Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The delivery log's entries, oldest first (the last ``limit`` if given). A line
    torn by a crash mid-write is skipped, not fatal."""
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
    return entries[-limit:] if limit else entries


def verdict_notification(
    transaction: Mapping[str, Any],
    *,
    tx_id: str | None = None,
    links: Mapping[str, str] | None = None,
) -> Notification | None:
    """The notification for a failed ``contract.verdict`` transaction; None for anything
    else (a passing verdict, another type), so a caller can feed it every transaction."""
    if transaction.get("type") != "contract.verdict":
        return None
    body = transaction.get("body") or {}
    if body.get("result") != "fail":
        return None
    subject = transaction.get("subject") or {}
    what = f"{subject.get('kind', '?')}:{subject.get('id', '?')}"
    contract = f"{body.get('contract', '?')} v{body.get('version', '?')}"
    failed = [r for r in body.get("requirements") or [] if r.get("result") == "fail"]
    lines = [f"• {r.get('name', '?')}: {r.get('reason') or 'failed'}" for r in failed]
    fields = {"contract": contract, "subject": what, "trigger": str(body.get("trigger", "?"))}
    if tx_id:
        fields["verdict"] = tx_id
    return Notification(
        event="contract.verdict.failed",
        title=f"{body.get('contract', 'contract')} failed for {what}",
        text="\n".join(lines) or "The contract's verdict is fail.",
        severity="error",
        fields=fields,
        links=dict(links or {}),
    )


# -- configuration --


def _expand(value: str, key: str, environ: Mapping[str, str]) -> str:
    """``${NAME}`` from the environment, so secrets stay out of the YAML file."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{key}: environment variable {name} is not set", key=key)
        return environ[name]

    return _ENV_REF.sub(sub, value)


def load_notify_targets(
    section: Mapping[str, Any] | None,
    *,
    where: str = "notify",
    environ: Mapping[str, str] | None = None,
) -> list[WebhookTarget]:
    """Targets from the ``notify`` section of ``opsledger.yaml``::

        notify:
          targets:
            - kind: slack                       # or webhook (the default)
              url: ${SLACK_WEBHOOK_URL}         # ${VAR} comes from the environment
            - url: https://hooks.example.com/opsledger
              headers: {Authorization: "Bearer ${HOOK_TOKEN}"}
              name: ops-hook                    # optional label for logs

    Raises ``ConfigError`` naming the key (``notify.targets[1].url``).
    """
    env = os.environ if environ is None else environ
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where} must be a mapping", key=where)
    unknown = sorted(set(section) - {"targets"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key", key=f"{where}.{unknown[0]}")
    entries = section.get("targets") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.targets must be a list", key=f"{where}.targets")
    targets = []
    for index, entry in enumerate(entries):
        base = f"{where}.targets[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{base} must be a mapping", key=base)
        extra = sorted(set(entry) - {"kind", "url", "headers", "name"})
        if extra:
            raise ConfigError(f"{base}.{extra[0]}: unknown key", key=f"{base}.{extra[0]}")
        kind = entry.get("kind", "webhook")
        if kind not in ("webhook", "slack"):
            raise ConfigError(
                f"{base}.kind must be webhook or slack, got {kind!r}", key=f"{base}.kind"
            )
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise ConfigError(f"{base}.url is required", key=f"{base}.url")
        headers = entry.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConfigError(f"{base}.headers must be a mapping", key=f"{base}.headers")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{base}.name must be a string", key=f"{base}.name")
        resolved_headers = {}
        for header, value in headers.items():
            key = f"{base}.headers.{header}"
            if not isinstance(value, str | int):
                raise ConfigError(f"{key} must be a string", key=key)
            resolved_headers[str(header)] = _expand(str(value), key, env)
        try:
            targets.append(
                WebhookTarget(
                    _expand(url, f"{base}.url", env),
                    headers=resolved_headers,
                    kind=kind,
                    name=name,
                )
            )
        except InvalidInput as exc:
            field_name = exc.details.get("field", "url")
            key = f"{base}.{field_name}"
            raise ConfigError(f"{key}: {exc.message}", key=key) from None
    return targets
