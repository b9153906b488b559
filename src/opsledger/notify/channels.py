"""More places to send a notification: PagerDuty Events v2 and email (SMTP), and the
monitor's ``notify`` list that names every channel.

Both plug into ``Notifier`` like the webhook: ``send`` makes one attempt and says
whether it may be retried, so retries, backoff and the delivery log are the same for
every channel. Secrets (a PagerDuty routing key, an SMTP password) come from
``${VAR}`` in the config, are never logged, and are blanked out of error messages.

PagerDuty: a notification whose event ends in ``.resolved`` resolves, anything else
triggers; the ``dedup_key`` is the notification's ``key`` (the alert's fingerprint), so
PagerDuty folds repeats into one incident and the resolve closes it. Email uses the
standard library's ``smtplib`` (STARTTLS or implicit TLS, optional login); a 4xx reply
or a dropped connection is retried, a 5xx is permanent.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import httpx

from opsledger.core import ConfigError, InvalidInput
from opsledger.notify.delivery import (
    Channel,
    Notification,
    Outcome,
    _expand,
    load_notify_targets,
    post_json,
    redact_url,
)

__all__ = [
    "PAGERDUTY_URL",
    "EmailTarget",
    "PagerDutyTarget",
    "channel_name",
    "email_message",
    "load_channels",
    "pagerduty_payload",
]

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
_PD_SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def pagerduty_payload(notification: Notification, routing_key: str) -> dict[str, Any]:
    """An Events API v2 event: trigger (with a payload) or resolve (key only)."""
    n = notification
    dedup = n.key or hashlib.sha256(n.title.encode()).hexdigest()[:32]
    if n.event.endswith(".resolved"):
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "client": "opsledger",
        "payload": {
            "summary": n.title[:1024],
            "source": n.fields.get("target") or n.fields.get("chain") or "opsledger-monitor",
            "severity": _PD_SEVERITY[n.severity],
            "class": n.fields.get("alertname", n.event),
            "custom_details": {**n.fields, **({"text": n.text} if n.text else {})},
        },
    }
    if n.links:
        event["links"] = [{"href": url, "text": label} for label, url in n.links.items()]
    return event


@dataclass(frozen=True)
class PagerDutyTarget:
    routing_key: str = field(repr=False)
    url: str = PAGERDUTY_URL
    name: str | None = None
    kind: str = "pagerduty"

    def __post_init__(self) -> None:
        if not self.routing_key:
            raise InvalidInput("a PagerDuty target needs a routing_key", field="routing_key")
        if not self.url.startswith(("http://", "https://")):
            raise InvalidInput("url must be an http(s) URL", field="url")

    @property
    def display(self) -> str:
        return redact_url(self.url)

    def send(self, notification: Notification, http: httpx.Client) -> Outcome:
        payload = pagerduty_payload(notification, self.routing_key)
        headers = {"User-Agent": "opsledger-notify"}
        return post_json(self, self.url, payload, headers, http, secrets=[self.routing_key])


def email_message(notification: Notification, sender: str, to: Sequence[str]) -> EmailMessage:
    n = notification
    message = EmailMessage()
    message["Subject"] = f"[{n.severity.upper()}] {n.title}"
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="opsledger")
    message["X-Opsledger-Event"] = n.event
    if n.key:
        message["X-Opsledger-Key"] = n.key
    lines = [n.title, ""]
    if n.text:
        lines += [n.text, ""]
    lines += [f"{k}: {v}" for k, v in n.fields.items()]
    if n.links:
        lines += ["", *(f"{label}: {url}" for label, url in n.links.items())]
    message.set_content("\n".join(lines) + "\n")
    return message


@dataclass(frozen=True)
class EmailTarget:
    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 25
    security: str = "none"  # none | starttls | tls
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    name: str | None = None
    kind: str = "email"

    def __post_init__(self) -> None:
        if self.security not in ("none", "starttls", "tls"):
            raise InvalidInput("security must be none, starttls or tls", field="security")
        if not self.to or not all("@" in a for a in self.to):
            raise InvalidInput("to: one or more email addresses", field="to")
        if "@" not in self.sender:
            raise InvalidInput("from: an email address", field="from")

    @property
    def display(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def send(self, notification: Notification, http: httpx.Client) -> Outcome:
        message = email_message(notification, self.sender, self.to)
        secrets = [self.password] if self.password else []
        try:
            smtp: smtplib.SMTP
            if self.security == "tls":
                context = ssl.create_default_context()
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            retry = all(400 <= c < 500 for c in codes)
            return Outcome(False, retry, min(codes), "recipients refused")
        except smtplib.SMTPResponseException as exc:
            error = _clean(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", secrets)
            return Outcome(False, 400 <= exc.smtp_code < 500, exc.smtp_code, error)
        except (smtplib.SMTPException, OSError) as exc:
            return Outcome(False, True, None, _clean(f"{type(exc).__name__}: {exc}", secrets))
        return Outcome(True, status=250)


def _clean(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    return message[:500]


# -- configuration --

_COMMON = {"kind", "name", "match"}


def load_channels(
    entries: Sequence[Mapping[str, Any]],
    *,
    where: str = "monitor.notify",
    environ: Mapping[str, str] | None = None,
) -> list[Channel]:
    """Channels from the monitor's ``notify`` list (``match`` is the caller's business)::

    - {name: hook, kind: webhook, url: "https://...", headers: {...}}
    - {name: chat, kind: slack, url: "${SLACK_WEBHOOK_URL}"}
    - {name: pager, kind: pagerduty, routing_key: "${PD_ROUTING_KEY}"}
    - {name: mail, kind: email, host: smtp.example.com, port: 587, security: starttls,
       username: alerts, password: "${SMTP_PASSWORD}", from: alerts@example.com,
       to: [oncall@example.com]}
    """
    env = os.environ if environ is None else environ
    channels: list[Channel] = []
    for index, entry in enumerate(entries):
        base = f"{where}[{index}]"
        kind = entry.get("kind", "webhook")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{base}.name: must be a string", key=f"{base}.name")
        try:
            if kind in ("webhook", "slack"):
                target = {k: v for k, v in entry.items() if k != "match"}
                (webhook,) = load_notify_targets({"targets": [target]}, where=where, environ=env)
                channels.append(webhook)
            elif kind == "pagerduty":
                _known(entry, {"routing_key", "url"}, base)
                key = _expand(str(entry.get("routing_key") or ""), f"{base}.routing_key", env)
                url = _expand(str(entry.get("url", PAGERDUTY_URL)), f"{base}.url", env)
                channels.append(PagerDutyTarget(key, url, name))
            elif kind == "email":
                _known(
                    entry,
                    {"host", "port", "security", "username", "password", "from", "to", "timeout"},
                    base,
                )
                to = entry.get("to")
                recipients = (to,) if isinstance(to, str) else tuple(str(a) for a in to or ())
                password = entry.get("password")
                channels.append(
                    EmailTarget(
                        host=str(entry.get("host") or "127.0.0.1"),
                        sender=str(entry.get("from") or ""),
                        to=recipients,
                        port=int(entry.get("port", 25)),
                        security=str(entry.get("security", "none")),
                        username=entry.get("username"),
                        password=None
                        if password is None
                        else _expand(str(password), f"{base}.password", env),
                        timeout=float(entry.get("timeout", 10.0)),
                        name=name,
                    )
                )
            else:
                raise ConfigError(
                    f"{base}.kind: one of webhook, slack, pagerduty, email", key=f"{base}.kind"
                )
        except InvalidInput as exc:
            key = f"{base}.{exc.details.get('field', 'kind')}"
            raise ConfigError(f"{key}: {exc.message}", key=key) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{base}: {exc}", key=base) from None
    return channels


def _known(entry: Mapping[str, Any], allowed: set[str], base: str) -> None:
    extra = sorted(set(entry) - allowed - _COMMON)
    if extra:
        raise ConfigError(f"{base}.{extra[0]}: unknown key", key=f"{base}.{extra[0]}")


def channel_name(channel: Channel, index: int) -> str:
    return channel.name or f"{channel.kind}-{index}"
