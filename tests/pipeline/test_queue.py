"""The queue's pieces: settings, the message format, the content-addressed Object Store,
and the JetStream objects, the last two against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import AckPolicy, RetentionPolicy

from opsledger.core import ConfigError, InvalidInput, NotFound
from opsledger.pipeline.artifacts_nats import ArtifactStore, check_relpath, collect_files
from opsledger.pipeline.queue import (
    JobMessage,
    QueueSettings,
    ResultMessage,
    connect,
    ensure_queue,
    parse_seconds,
)
from opsledger.testing.nats_server import NatsServer, running_nats

_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


# -- settings --


def test_settings_from_config_section() -> None:
    settings = QueueSettings.from_mapping(
        {"queue": "nats://127.0.0.1:4333", "name": "builds", "ack_wait": "2s", "max_deliver": 3}
    )
    assert settings.url == "nats://127.0.0.1:4333"
    assert settings.stream == "OPSLEDGER_JOBS_BUILDS"
    assert settings.subject == "opsledger.jobs.builds"
    assert settings.consumer == "workers_builds"
    assert settings.ack_wait == 2.0
    assert settings.heartbeat < settings.ack_wait
    assert settings.max_deliver == 3


def test_overrides_win_over_the_section() -> None:
    settings = QueueSettings.from_mapping(
        {"queue": "nats://127.0.0.1:4333", "name": "a"}, url="nats://127.0.0.1:1", queue="b"
    )
    assert (settings.url, settings.queue) == ("nats://127.0.0.1:1", "b")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"queue": "http://127.0.0.1:4222"}, "jobs.queue"),
        ({"queue": "nats://x:1", "name": "Has Space"}, "jobs.name"),
        ({"queue": "nats://x:1", "ack_wait": "soon"}, "jobs.ack_wait"),
        ({"queue": "nats://x:1", "ack_wait": 0}, "jobs.ack_wait"),
        ({"queue": "nats://x:1", "max_deliver": 0}, "jobs.max_deliver"),
        ({"queue": "nats://x:1", "max_deliver": True}, "jobs.max_deliver"),
        ({"queue": "nats://x:1", "retries": 2}, "jobs.retries"),
    ],
)
def test_bad_settings_name_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        QueueSettings.from_mapping(section)
    assert info.value.details["key"] == key
    assert key in info.value.message


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), (5, 5.0)]
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_seconds(text, key="k") == seconds


@given(st.text(max_size=20) | st.integers() | st.floats(allow_nan=True) | st.booleans())
def test_durations_never_crash(value: Any) -> None:
    with contextlib.suppress(ConfigError):
        assert parse_seconds(value, key="k") > 0


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_result_subjects_are_valid_and_distinct(run: str, job: str) -> None:
    settings = QueueSettings()
    subject = settings.result_subject(run, job)
    prefix, token = subject.rsplit(".", 1)
    assert prefix == "opsledger.results.default"
    assert _SUBJECT_TOKEN.match(token)
    assert settings.cancel_subject(run, job).startswith(subject + ".")
    assert settings.result_subject(run + "x", job) != subject


# -- messages --

_names = st.text(min_size=1, max_size=30)
_str_maps = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)


@given(
    st.sampled_from(["pipeline", "contract"]),
    _names,
    _names,
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
    st.none() | st.just("sha256:" + "a" * 64),
    _str_maps,
    _str_maps,
)
def test_job_message_round_trip(
    kind: Any,
    run: str,
    job: str,
    spec: dict[str, Any],
    inputs: str | None,
    env: dict[str, str],
    secrets: dict[str, str],
) -> None:
    message = JobMessage(kind, run, job, spec, inputs, env, secrets, queued_at=1.5)
    assert JobMessage.from_bytes(message.to_bytes()) == message


@given(st.binary(max_size=200))
def test_garbage_is_refused_cleanly(data: bytes) -> None:
    for decode in (JobMessage.from_bytes, ResultMessage.from_bytes):
        with contextlib.suppress(InvalidInput):
            decode(data)


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"kind": "shell"},
        {"run": ""},
        {"spec": []},
        {"env": {"A": 1}},
        {"secrets": ["env:X"]},
        {"inputs": 7},
    ],
)
def test_job_message_fields_are_checked(change: dict[str, Any]) -> None:
    raw = json.loads(JobMessage("pipeline", "r1", "j", {}).to_bytes())
    raw.update(change)
    with pytest.raises(InvalidInput):
        JobMessage.from_bytes(json.dumps(raw).encode())


def test_a_job_message_carries_secret_references_not_values() -> None:
    message = JobMessage("pipeline", "r1", "j", {}, secrets={"TOKEN": "env:GITHUB_TOKEN"})
    assert b"env:GITHUB_TOKEN" in message.to_bytes()
    assert message.msg_id.startswith("r1/j/")


# -- paths --


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\0b"])
def test_unsafe_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        check_relpath(bad)


def test_snapshot_skips_ignored_and_excluded_folders(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "key").write_text("secret")
    (tmp_path / "link").symlink_to("/etc/hostname")
    files = collect_files(tmp_path, ignore_dirs={".git"}, exclude=[tmp_path / "home"])
    assert set(files) == {"src/a.py"}


# -- against a real server --


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.nats
def test_queue_objects_are_a_work_queue_with_explicit_acks(nats_server: NatsServer) -> None:
    settings = QueueSettings(url=nats_server.url, queue="shape", ack_wait=2, max_deliver=3)

    async def check() -> None:
        nc = await connect(settings, name="test")
        js = nc.jetstream()
        await ensure_queue(js, settings)
        await ensure_queue(js, settings)  # idempotent
        stream = await js.stream_info(settings.stream)
        assert stream.config.retention == RetentionPolicy.WORK_QUEUE
        consumer = await js.consumer_info(settings.stream, settings.consumer)
        assert consumer.config.ack_policy == AckPolicy.EXPLICIT
        assert consumer.config.ack_wait == 2.0
        assert consumer.config.max_deliver == 3
        # Changed settings update the shared consumer rather than failing.
        await ensure_queue(js, QueueSettings(url=nats_server.url, queue="shape", ack_wait=5))
        consumer = await js.consumer_info(settings.stream, settings.consumer)
        assert consumer.config.ack_wait == 5.0
        await nc.close()

    _run(check())


@pytest.mark.nats
def test_object_store_is_content_addressed_and_checked(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = QueueSettings(url=nats_server.url)
    source = tmp_path / "big.bin"
    payload = bytes(range(256)) * 9000  # several chunks
    source.write_bytes(payload)

    async def check() -> None:
        nc = await connect(settings, name="test")
        js = nc.jetstream()
        store = await ArtifactStore.open(js, "test-objects")
        digest = await store.put_file(source)
        assert digest == "sha256:" + hashlib.sha256(payload).hexdigest()
        assert await store.put_file(source) == digest  # stored once
        out = tmp_path / "out" / "big.bin"
        await store.get_file(digest, out)
        assert out.read_bytes() == payload

        manifest = await store.put_tree({"dir/big.bin": source})
        await store.get_tree(manifest, tmp_path / "tree")
        assert (tmp_path / "tree" / "dir" / "big.bin").read_bytes() == payload

        # An object stored under another content's name is refused, not used.
        wrong = "sha256:" + hashlib.sha256(b"expected").hexdigest()
        obs = await js.object_store("test-objects")
        await obs.put("sha256-" + wrong[7:], b"substituted")
        with pytest.raises(InvalidInput, match="does not match"):
            await store.get_file(wrong, tmp_path / "x")
        assert not (tmp_path / "x").exists()
        with pytest.raises(InvalidInput, match="does not match"):
            await store.get_bytes(wrong)

        # A manifest may not write outside its directory.
        evil = await store.put_bytes(json.dumps({"../escape": digest}).encode())
        with pytest.raises(InvalidInput, match="safe relative path"):
            await store.get_tree(evil, tmp_path / "evil")
        assert not (tmp_path / "escape").exists()

        with pytest.raises(NotFound):
            await store.get_bytes("sha256:" + "0" * 64)
        await nc.close()

    _run(check())
