"""PagerDuty Events v2 against a local receiver that checks the payload, and email
through a real local SMTP server (aiosmtpd), both through the ``Notifier``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from opsledger.core import ConfigError
from opsledger.notify import DELIVERY_LOG, Notification, Notifier, read_delivery_log
from opsledger.notify.channels import EmailTarget, PagerDutyTarget, load_channels
from opsledger.notify.delivery import Channel
from opsledger.testing.anvil import free_port
from opsledger.testing.webhook import webhook_receiver

FIRING = Notification(
    event="alert.firing",
    title="node-a is 12 blocks behind",
    text="lagging",
    severity="critical",
    fields={"alertname": "NodeHeadLag", "target": "node-a", "severity": "critical"},
    links={"runbook": "https://opsledger.dev/runbooks/node-head-lag"},
    key="fp-node-a",
    refs=("fp-node-a",),
)
RESOLVED = Notification(
    event="alert.resolved", title="[RESOLVED] node-a", severity="info", key="fp-node-a"
)


def check_events_v2(event: dict[str, Any]) -> None:
    """The Events API v2 shape (developer.pagerduty.com/docs/events-api-v2/trigger-events)."""
    assert set(event) >= {"routing_key", "event_action", "dedup_key"}
    assert event["event_action"] in ("trigger", "resolve", "acknowledge")
    if event["event_action"] == "trigger":
        payload = event["payload"]
        assert {"summary", "source", "severity"} <= set(payload)
        assert payload["severity"] in ("critical", "error", "warning", "info")
        assert 0 < len(payload["summary"]) <= 1024
        for link in event.get("links", []):
            assert set(link) == {"href", "text"}


def test_pagerduty_triggers_and_resolves_with_the_fingerprint_as_dedup_key(
    tmp_path: Path,
) -> None:
    outcomes: list[tuple[str, str, int]] = []

    def on_final(target: Channel, note: Notification, outcome: str, attempts: int) -> None:
        outcomes.append((note.event, outcome, attempts))

    with webhook_receiver() as receiver:
        target = PagerDutyTarget("R0UTINGKEY", receiver.url, "pager")
        notifier = Notifier([target], log_path=tmp_path / DELIVERY_LOG, on_final=on_final)
        notifier.notify(FIRING)
        notifier.notify(RESOLVED)
        assert notifier.close(timeout=10)
        trigger, resolve = receiver.received
    for event in (trigger, resolve):
        check_events_v2(event)
    assert trigger["dedup_key"] == resolve["dedup_key"] == "fp-node-a"
    assert trigger["routing_key"] == "R0UTINGKEY"
    assert trigger["payload"]["source"] == "node-a"
    assert trigger["payload"]["custom_details"]["alertname"] == "NodeHeadLag"
    assert resolve == {
        "routing_key": "R0UTINGKEY",
        "event_action": "resolve",
        "dedup_key": "fp-node-a",
    }
    assert outcomes == [("alert.firing", "delivered", 1), ("alert.resolved", "delivered", 1)]
    logged = (tmp_path / DELIVERY_LOG).read_text()
    assert "R0UTINGKEY" not in logged
    assert [e["kind"] for e in read_delivery_log(tmp_path / DELIVERY_LOG)] == ["pagerduty"] * 2


class Mailbox:
    """An aiosmtpd handler: answers 451 ``busy`` times, then accepts."""

    def __init__(self, busy: int = 0) -> None:
        self.busy = busy
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.busy:
                self.busy -= 1
                return "451 4.3.0 try again later"
            content = envelope.content if isinstance(envelope.content, bytes) else b""
            self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox(busy=1)
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def test_email_is_retried_after_a_4xx_then_delivered(
    tmp_path: Path, smtp: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp
    target = EmailTarget(
        "127.0.0.1", "alerts@example.com", ("oncall@example.com",), port=port, name="mail"
    )
    notifier = Notifier([target], log_path=tmp_path / DELIVERY_LOG, sleep=lambda _: None)
    notifier.notify(FIRING)
    assert notifier.close(timeout=10)
    ((sender, rcpts, raw),) = mailbox.messages
    assert (sender, rcpts) == ("alerts@example.com", ["oncall@example.com"])
    message = message_from_bytes(raw)
    assert message["Subject"] == "[CRITICAL] node-a is 12 blocks behind"
    assert message["X-Opsledger-Key"] == "fp-node-a"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"target: node-a" in body and b"runbook: https://opsledger.dev" in body
    attempts = [(e["outcome"], e["status"]) for e in read_delivery_log(tmp_path / DELIVERY_LOG)]
    assert attempts == [("retry", 451), ("delivered", 250)]


def test_email_to_a_closed_port_fails_after_the_attempts() -> None:
    target = EmailTarget("127.0.0.1", "a@example.com", ("b@example.com",), port=free_port())
    outcomes: list[str] = []
    notifier = Notifier(
        [target],
        max_attempts=2,
        sleep=lambda _: None,
        on_final=lambda _t, _n, outcome, _a: outcomes.append(outcome),
    )
    notifier.notify(FIRING)
    assert notifier.close(timeout=10)
    assert outcomes == ["failed"]


def test_channel_config_names_the_key() -> None:
    env = {"PD_KEY": "secret-key", "SMTP_PASSWORD": "pw"}
    pager, mail, hook = load_channels(
        [
            {"name": "pager", "kind": "pagerduty", "routing_key": "${PD_KEY}"},
            {
                "name": "mail",
                "kind": "email",
                "host": "smtp.example.com",
                "port": 587,
                "security": "starttls",
                "username": "alerts",
                "password": "${SMTP_PASSWORD}",
                "from": "alerts@example.com",
                "to": "oncall@example.com",
            },
            {"kind": "webhook", "url": "http://127.0.0.1:1/h", "match": {"a": "b"}},
        ],
        environ=env,
    )
    assert isinstance(pager, PagerDutyTarget) and pager.routing_key == "secret-key"
    assert "secret-key" not in repr(pager) and "pw" not in repr(mail)
    assert isinstance(mail, EmailTarget) and mail.to == ("oncall@example.com",)
    assert hook.kind == "webhook"
    for entries, key in (
        ([{"kind": "pagerduty"}], "monitor.notify[0].routing_key"),
        ([{"kind": "email", "from": "a@b", "to": ["nope"]}], "monitor.notify[0].to"),
        ([{"kind": "email", "from": "a@b", "to": ["c@d"], "tls": 1}], "monitor.notify[0].tls"),
        ([{"kind": "sms"}], "monitor.notify[0].kind"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_channels(entries, environ=env)
        assert caught.value.details.get("key") == key
