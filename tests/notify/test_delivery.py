"""Notifications against a real local HTTP receiver: retries, payloads, queues, the log."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opsledger.core import ConfigError, InvalidInput
from opsledger.notify import (
    DELIVERY_LOG,
    Notification,
    Notifier,
    WebhookTarget,
    load_notify_targets,
    read_delivery_log,
    redact_url,
    verdict_notification,
)


@dataclass
class Receiver:
    """Answers ``statuses`` in order (then 200); ``hold`` makes the first request wait."""

    statuses: list[int] = field(default_factory=list)
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    hold: threading.Event | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                index = len(state.requests)
                status = state.statuses[index] if index < len(state.statuses) else 200
                state.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "status": status,
                    }
                )
            state.arrived.set()
            if index == 0 and state.hold is not None:
                state.hold.wait(30)
            self.send_response(status)
            for name, value in state.headers.get(index, {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    if state.hold is not None:
        state.hold.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def dead_url() -> str:
    """A port that nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


class ListLogger:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    # The same signature as structlog's methods: ``event`` cannot also be a field.
    def info(self, event: str, **fields: Any) -> None:
        self.events.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.events.append(("error", event, fields))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


ALERT = Notification(
    event="contract.verdict.failed",
    title="release-gate failed for artifact:sha256:ab12",
    text="• security-scan: 1 critical finding",
    severity="error",
    fields={"contract": "release-gate v1"},
    links={"Verdict": "https://ledger.example/tx/ab12"},
)


def test_retries_5xx_then_delivers_once_and_logs_every_attempt(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.statuses = [500, 502]
    log = tmp_path / DELIVERY_LOG
    delays: list[float] = []
    logger = ListLogger()
    target = WebhookTarget(
        receiver.url.replace("http://", "http://user:pw@") + "/hook?token=s3cret",
        headers={"X-Hook-Token": "hunter2"},
    )
    notifier = Notifier(
        [target],
        log_path=log,
        sleep=delays.append,
        jitter=lambda: 0.5,
        backoff=0.5,
        logger=logger,
    )
    notifier.notify(ALERT)
    assert notifier.close(timeout=10)

    assert [r["status"] for r in receiver.requests] == [500, 502, 200]
    assert len(receiver.accepted) == 1
    sent = receiver.accepted[0]
    assert sent["path"] == "/hook?token=s3cret"
    assert sent["headers"]["X-Hook-Token"] == "hunter2"
    assert sent["headers"]["Authorization"].startswith("Basic ")  # from the URL's user:pw
    assert sent["body"] == {
        "source": "opsledger",
        "event": "contract.verdict.failed",
        "title": "release-gate failed for artifact:sha256:ab12",
        "text": "• security-scan: 1 critical finding",
        "severity": "error",
        "fields": {"contract": "release-gate v1"},
        "links": [{"label": "Verdict", "url": "https://ledger.example/tx/ab12"}],
    }
    # Equal jitter at 0.5: 3/4 of each exponential step (0.5 s, then 1 s).
    assert delays == [0.375, 0.75]

    entries = read_delivery_log(log)
    assert [(e["attempt"], e["outcome"], e["status"]) for e in entries] == [
        (1, "retry", 500),
        (2, "retry", 502),
        (3, "delivered", 200),
    ]
    assert len({e["delivery"] for e in entries}) == 1
    assert all(e["target"] == f"{receiver.url}/hook" for e in entries)
    assert all(isinstance(e["duration_ms"], int) for e in entries)
    assert entries[0]["error"] == "HTTP 500"
    text = log.read_text()
    for secret in ("s3cret", "token", "hunter2", "pw@", "X-Hook-Token"):
        assert secret not in text

    attempts = [fields for _, event, fields in logger.events if event == "notify.attempt"]
    assert [a["outcome"] for a in attempts] == ["retry", "retry", "delivered"]
    assert all(a["target"] == f"{receiver.url}/hook" for a in attempts)
    assert "s3cret" not in repr(logger.events)
    assert "hunter2" not in repr(logger.events)


def test_429_honours_retry_after(receiver: Receiver) -> None:
    receiver.statuses = [429]
    receiver.headers = {0: {"Retry-After": "7"}}
    delays: list[float] = []
    notifier = Notifier(
        [WebhookTarget(receiver.url)], sleep=delays.append, jitter=lambda: 0.0, logger=ListLogger()
    )
    notifier.notify(ALERT)
    assert notifier.close(timeout=10)
    assert delays == [7.0]
    assert len(receiver.accepted) == 1


def test_a_client_error_is_not_retried(receiver: Receiver, tmp_path: Path) -> None:
    receiver.statuses = [400]
    log = tmp_path / DELIVERY_LOG
    notifier = Notifier(
        [WebhookTarget(receiver.url)], log_path=log, sleep=lambda _: None, logger=ListLogger()
    )
    notifier.notify(ALERT)
    assert notifier.close(timeout=10)
    assert len(receiver.requests) == 1
    assert [(e["outcome"], e["status"]) for e in read_delivery_log(log)] == [("failed", 400)]


def test_gives_up_after_max_attempts(receiver: Receiver, tmp_path: Path) -> None:
    receiver.statuses = [503] * 10
    log = tmp_path / DELIVERY_LOG
    notifier = Notifier(
        [WebhookTarget(receiver.url)],
        log_path=log,
        max_attempts=3,
        sleep=lambda _: None,
        logger=ListLogger(),
    )
    notifier.notify(ALERT)
    assert notifier.close(timeout=10)
    assert len(receiver.requests) == 3
    assert [e["outcome"] for e in read_delivery_log(log)] == ["retry", "retry", "failed"]


def test_slack_payload_shape(receiver: Receiver, tmp_path: Path) -> None:
    log = tmp_path / DELIVERY_LOG
    notification = Notification(
        event="contract.verdict.failed",
        title="release-gate failed",
        text="scan <found> 1 critical & 2 high",
        severity="critical",
        fields={"service": "payments", "version": "1.4.0"},
        links={"Verdict": "https://ledger.example/tx/1", "Run": "https://ci.example/r/9"},
    )
    target = WebhookTarget(receiver.url + "/services/T000/B000/XXXXSECRET", kind="slack")
    notifier = Notifier([target], log_path=log, sleep=lambda _: None, logger=ListLogger())
    notifier.notify(notification)
    assert notifier.close(timeout=10)

    payload = receiver.accepted[0]["body"]
    assert set(payload) == {"text", "blocks"}
    assert "release-gate failed" in payload["text"]
    assert "CRITICAL" in payload["text"]
    blocks = payload["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "context", "actions"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": "release-gate failed"}
    assert blocks[1]["text"] == {
        "type": "mrkdwn",
        "text": "scan &lt;found&gt; 1 critical &amp; 2 high",
    }
    assert blocks[2]["fields"][0] == {"type": "mrkdwn", "text": "*service*\npayments"}
    assert [e["url"] for e in blocks[4]["elements"]] == [
        "https://ledger.example/tx/1",
        "https://ci.example/r/9",
    ]
    assert all(e["type"] == "button" for e in blocks[4]["elements"])
    # The Slack path is the credential: the log keeps its first segment only.
    (entry,) = read_delivery_log(log)
    assert entry["target"] == f"{receiver.url}/services/***"
    assert "XXXXSECRET" not in log.read_text()


def test_a_dead_target_never_blocks_notify(dead_url: str, tmp_path: Path) -> None:
    log = tmp_path / DELIVERY_LOG
    hold = threading.Event()
    notifier = Notifier(
        [WebhookTarget(dead_url)],
        log_path=log,
        queue_size=2,
        max_attempts=2,
        sleep=lambda _: hold.wait(30),  # the worker sits in its backoff until released
        logger=ListLogger(),
    )
    try:
        notifier.notify(ALERT)
        # The first delivery failed to connect and its worker is now backing off.
        assert wait_for(lambda: any(e["outcome"] == "retry" for e in read_delivery_log(log)))
        for _ in range(3):
            notifier.notify(ALERT)  # returns at once although the target is down
        assert notifier.pending() == 2  # bounded: the oldest queued one was dropped
        entries = read_delivery_log(log)
        assert entries[0]["error"].startswith("ConnectError")
        assert [e["outcome"] for e in entries].count("dropped") == 1
    finally:
        hold.set()
    assert notifier.close(timeout=10)
    outcomes = [e["outcome"] for e in read_delivery_log(log)]
    assert outcomes.count("failed") == 3  # the first and the two still queued
    assert notifier.pending() == 0


def test_close_drains_the_queue(receiver: Receiver) -> None:
    receiver.hold = threading.Event()
    notifier = Notifier([WebhookTarget(receiver.url)], logger=ListLogger())
    for index in range(3):
        notifier.notify(Notification(event="e", title=f"n{index}"))
    assert receiver.arrived.wait(10)  # the first is in flight, held by the receiver
    result: list[bool] = []
    closer = threading.Thread(target=lambda: result.append(notifier.close(timeout=30)))
    closer.start()
    assert wait_for(lambda: notifier.closed)
    assert closer.is_alive()  # close waits for the queue while the receiver holds
    receiver.hold.set()
    closer.join(30)
    assert result == [True]
    assert [r["body"]["title"] for r in receiver.accepted] == ["n0", "n1", "n2"]


def test_close_gives_up_after_its_timeout_and_logs_what_it_abandoned(
    dead_url: str, tmp_path: Path
) -> None:
    log = tmp_path / DELIVERY_LOG
    hold = threading.Event()
    notifier = Notifier(
        [WebhookTarget(dead_url)],
        log_path=log,
        sleep=lambda _: hold.wait(30),
        logger=ListLogger(),
    )
    notifier.notify(ALERT)
    assert wait_for(lambda: bool(read_delivery_log(log)))
    notifier.notify(ALERT)
    assert not notifier.close(timeout=0.1)
    hold.set()  # let the stuck worker see the abort
    assert wait_for(lambda: [e["outcome"] for e in read_delivery_log(log)].count("abandoned") == 2)


def test_notify_after_close_is_dropped_quietly(receiver: Receiver) -> None:
    logger = ListLogger()
    notifier = Notifier([WebhookTarget(receiver.url)], logger=logger)
    assert notifier.close()
    notifier.notify(ALERT)  # no exception
    assert ("warning", "notify.closed") in [(lvl, ev) for lvl, ev, _ in logger.events]
    assert receiver.requests == []


def test_an_unwritable_delivery_log_does_not_stop_delivery(
    receiver: Receiver, tmp_path: Path
) -> None:
    logger = ListLogger()
    notifier = Notifier([WebhookTarget(receiver.url)], log_path=tmp_path, logger=logger)
    notifier.notify(ALERT)
    assert notifier.close(timeout=10)
    assert len(receiver.accepted) == 1
    assert any(ev == "notify.log_failed" for _, ev, _ in logger.events)


# -- targets and configuration --


def test_redacted_urls_and_repr() -> None:
    assert redact_url("https://u:p@hooks.example.com:8443/a/b?token=x#f") == (
        "https://hooks.example.com:8443/a/b"
    )
    assert redact_url("https://hooks.slack.com/services/T0/B0/abc", kind="slack") == (
        "https://hooks.slack.com/services/***"
    )
    target = WebhookTarget("https://h.example/x?k=secret", headers={"Authorization": "Bearer t"})
    assert "secret" not in repr(target)
    assert "Bearer" not in repr(target)


def test_target_validation() -> None:
    with pytest.raises(InvalidInput):
        WebhookTarget("ftp://example.com/x")
    with pytest.raises(InvalidInput):
        WebhookTarget("https://example.com/x", headers={"X-A": "one\r\nX-B: two"})
    with pytest.raises(InvalidInput):
        Notification(event="e", title="t", severity="fatal")  # type: ignore[arg-type]


def test_load_notify_targets() -> None:
    section = {
        "targets": [
            {"kind": "slack", "url": "${SLACK_URL}"},
            {
                "url": "https://hooks.example.com/opsledger",
                "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
                "name": "ops-hook",
            },
        ]
    }
    env = {"SLACK_URL": "https://hooks.slack.com/services/T/B/x", "HOOK_TOKEN": "t0k"}
    slack, hook = load_notify_targets(section, environ=env)
    assert (slack.kind, slack.url) == ("slack", "https://hooks.slack.com/services/T/B/x")
    assert (hook.kind, hook.name) == ("webhook", "ops-hook")
    assert hook.headers["Authorization"] == "Bearer t0k"
    assert load_notify_targets({}, environ={}) == []
    assert load_notify_targets(None, environ={}) == []


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"targets": [{"kind": "webhook"}]}, "notify.targets[0].url"),
        ({"targets": [{"url": "https://a.example", "kind": "teams"}]}, "notify.targets[0].kind"),
        ({"targets": [{"url": "ftp://a.example"}]}, "notify.targets[0].url"),
        ({"targets": [{"url": "https://a.example", "retries": 3}]}, "notify.targets[0].retries"),
        (
            {"targets": [{"url": "https://a.example", "headers": ["x"]}]},
            "notify.targets[0].headers",
        ),
        ({"targets": [{"url": "${MISSING}"}]}, "notify.targets[0].url"),
        (
            {"targets": [{"url": "https://a.example", "headers": {"A": "${MISSING}"}}]},
            "notify.targets[0].headers.A",
        ),
        ({"targets": {"url": "https://a.example"}}, "notify.targets"),
        ({"hooks": []}, "notify.hooks"),
    ],
)
def test_load_notify_targets_names_the_bad_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_notify_targets(section, environ={})
    assert exc.value.details["key"] == key
    assert key in exc.value.message


def test_verdict_notification() -> None:
    failed: dict[str, Any] = {
        "type": "contract.verdict",
        "subject": {"kind": "artifact", "id": "sha256:ab"},
        "body": {
            "contract": "release-gate",
            "version": 2,
            "trigger": "c" * 64,
            "result": "fail",
            "requirements": [
                {"name": "build", "result": "pass", "reason": "", "evidence": []},
                {"name": "scan", "result": "fail", "reason": "1 critical", "evidence": []},
            ],
        },
    }
    notification = verdict_notification(failed, tx_id="d" * 64)
    assert notification is not None
    assert notification.event == "contract.verdict.failed"
    assert notification.title == "release-gate failed for artifact:sha256:ab"
    assert notification.text == "• scan: 1 critical"
    assert notification.fields["verdict"] == "d" * 64
    passed = {**failed, "body": {**failed["body"], "result": "pass"}}
    assert verdict_notification(passed) is None
    assert verdict_notification({"type": "note", "body": {"text": "x"}}) is None
