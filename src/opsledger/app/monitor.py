"""``opsledger monitor``: compose the monitor from config and a home, and run it.

The probes, rules and status page run in one asyncio loop with the HTTP server
(uvicorn), so one process is enough. With a home, alerts and incidents are recorded as
the home's node actor through a ``BackgroundRecorder`` (the monitor never holds the
writer lock), and the status page reads incidents and uptime history from the ledger,
cached for a few seconds. Without a home it still probes, alerts and notifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
import uvicorn
import yaml

from opsledger.app.config import load_section
from opsledger.app.home import Home
from opsledger.app.signals import stop_on_signals
from opsledger.client.base import (
    LedgerClient,
    NullRecorder,
    Recorder,
    Signer,
    all_transactions,
    submit_signed,
)
from opsledger.core import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OpsledgerError,
    Subject,
    format_ts,
)
from opsledger.monitor.config import MonitorConfig, parse_monitor_config
from opsledger.monitor.incidents import fold_incidents, parse_ts
from opsledger.monitor.maintenance import Maintenance, fold_maintenance
from opsledger.monitor.promql import PromQLError, parse_duration
from opsledger.monitor.rules import Rule
from opsledger.monitor.service import (
    MonitorService,
    Receiver,
    build_rules,
    peer_firing,
    record_notified,
)
from opsledger.monitor.silences import fold_silences, new_silence, silence_body, silence_rows
from opsledger.monitor.statuspage import status_document, uptime_days
from opsledger.monitor.targets import apply_target_changes
from opsledger.monitor.web import create_app
from opsledger.notify import DELIVERY_LOG, Notification, Notifier
from opsledger.notify.channels import load_channels
from opsledger.notify.delivery import Channel
from opsledger.notify.routing import Silence, parse_matcher

__all__ = [
    "LedgerWatch",
    "build_receivers",
    "create_silence",
    "expire_silence",
    "list_silences",
    "load_monitor",
    "run_monitor",
]

log = structlog.get_logger(__name__)


def load_monitor(
    config_file: Path | None, home: Home | None
) -> tuple[MonitorConfig, list[Rule], Path]:
    """The validated config and rules: ``--config`` (a file with a ``monitor`` section, or
    the section itself) or else the home's ``opsledger.yaml``."""
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"{config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file}: not valid YAML: {exc}") from None
        section = loaded.get("monitor", loaded) if isinstance(loaded, dict) else loaded
        where, base = f"{config_file}: monitor", config_file.parent
    elif home is not None:
        section = load_section(home.config_path, "monitor")
        where, base = f"{home.config_path}: monitor", home.path
    else:
        raise ConfigError("give --config FILE or a home with a monitor section")
    config = parse_monitor_config(section, where=where)
    return config, build_rules(config, base=base), base


def build_receivers(
    config: MonitorConfig, home: Home | None, recorder: Recorder
) -> dict[str, Receiver]:
    """One notifier per notify entry, its final outcomes recorded as ``monitor.notified``."""
    log_path = home.path / DELIVERY_LOG if home is not None else None
    entries = list(config.notify)
    channels = load_channels(entries, where="monitor.notify")
    receivers = {}
    for name, channel in zip(config.receivers, channels, strict=True):

        def on_final(
            target: Channel, note: Notification, outcome: str, attempts: int, name: str = name
        ) -> None:
            record_notified(
                recorder,
                name,
                kind=target.kind,
                notification=note,
                outcome=outcome,
                attempts=attempts,
            )

        receivers[name] = Receiver(
            name,
            Notifier([channel], log_path=log_path, on_final=on_final),
            per_alert=channel.kind == "pagerduty",
        )
    return receivers


def _ledger_client(home: Home) -> LedgerClient:
    if home.server_url():
        return home.client()
    from opsledger.client.local import LocalClient

    return LocalClient(home.open_node(writable=False))


def _silence_rows(client: LedgerClient) -> list[dict[str, Any]]:
    """Silences and their early expiries, in ledger order (two exact-type queries: the
    ``monitor.*`` prefix would also page through every ``monitor.notified``)."""
    rows = all_transactions(client, {"type": "monitor.silence"})
    rows += all_transactions(client, {"type": "monitor.silence_expired"})
    return sorted(rows, key=lambda row: int(row["leaf_index"]))


class LedgerWatch:
    """What the monitor learns from the ledger: silences (made by the CLI or another
    monitor) and incident acknowledgements (for escalation)."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def silences(self) -> dict[str, Silence]:
        client = _ledger_client(self.home)
        try:
            return fold_silences(_silence_rows(client))
        finally:
            client.close()

    def config_changes(self) -> list[dict[str, Any]]:
        """Targets added or removed through the API, to replay on top of the file."""
        client = _ledger_client(self.home)
        try:
            return all_transactions(client, {"type": "monitor.config_changed"})
        finally:
            client.close()

    def peers(self, days: float = 2.0) -> dict[str, set[str]]:
        """Which vantages report which alerts firing (recent ``alert.*`` history)."""
        since = format_ts(datetime.now(UTC) - timedelta(days=days))
        client = _ledger_client(self.home)
        try:
            return peer_firing(all_transactions(client, {"type": "alert.*", "since": since}))
        finally:
            client.close()

    def acknowledged(self, incident: str) -> bool:
        client = _ledger_client(self.home)
        try:
            rows = all_transactions(
                client, {"type": "incident.acknowledged", "subject": f"incident:{incident}"}
            )
        finally:
            client.close()
        return bool(rows)


class _LedgerStatus:
    """Status page data with the ledger part cached (it changes slowly)."""

    def __init__(self, service: MonitorService, home: Home | None, ttl: float = 5.0) -> None:
        self.service = service
        self.home = home
        self.ttl = ttl
        self._cached: tuple[float, list[Any], dict[str, Any], list[Maintenance]] | None = None

    def _ledger(self, now: datetime) -> tuple[list[Any], dict[str, Any], list[Maintenance]]:
        if self.home is None:
            return [], uptime_days(self.service.config, self.service.alert_rows(), now), []
        if self._cached and time.monotonic() - self._cached[0] < self.ttl:
            return self._cached[1], self._cached[2], self._cached[3]
        client = self.home.client() if self.home.server_url() else None
        if client is None:
            from opsledger.client.local import LocalClient

            node = self.home.open_node(writable=False)
            client = LocalClient(node)
        try:
            incidents = list(
                fold_incidents(all_transactions(client, {"type": "incident.*"})).values()
            )
            since = format_ts(now - timedelta(days=90))
            alerts = all_transactions(client, {"type": "alert.*", "since": since})
            windows = list(
                fold_maintenance(all_transactions(client, {"type": "monitor.maintenance"})).values()
            )
        finally:
            client.close()
        uptime = uptime_days(self.service.config, alerts, now)
        self._cached = (time.monotonic(), incidents, uptime, windows)
        return incidents, uptime, windows

    def __call__(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        incidents, uptime, windows = self._ledger(now)
        return status_document(
            self.service.config,
            self.service.firing(),
            incidents,
            uptime,
            now,
            maintenance=windows,
        )


async def _sync_silences(
    service: MonitorService, watch: LedgerWatch | None, every: float = 5.0
) -> None:
    """Every few seconds, fold the ledger's silences into the router and (when a rule
    needs ``agree``) the other vantages' firing alerts into the service (off the loop)."""
    if watch is None:
        return
    agreeing = any(
        rule.labels.get("agree", "1") not in ("", "1") for rule in service.evaluator.rules
    )
    while True:
        try:
            service.sync_silences(await asyncio.to_thread(watch.silences))
            if agreeing:
                service.sync_peers(await asyncio.to_thread(watch.peers))
        except OpsledgerError as exc:
            log.warning("monitor.silence_sync_failed", error=str(exc))
        await asyncio.sleep(every)


def run_monitor(
    config: MonitorConfig,
    rules: list[Rule],
    home: Home | None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM."""
    recorder: Recorder = home.recorder(home.config().node) if home is not None else NullRecorder()
    receivers = build_receivers(config, home, recorder)
    watch = LedgerWatch(home) if home is not None else None
    if watch is not None:
        config = apply_target_changes(config, watch.config_changes())
    service = MonitorService(
        config,
        rules=rules,
        recorder=recorder,
        receivers=receivers,
        acknowledged=watch.acknowledged if watch is not None else None,
    )
    # the write API (silences, targets, Alertmanager) needs a token from the environment
    api_token = os.environ.get(config.api_token_env) or None
    app = create_app(service, _LedgerStatus(service, home), api_token=api_token)
    host, _, port = config.listen.rpartition(":")
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host.strip("[]"), port=int(port), log_level="warning", lifespan="off"
        )
    )

    async def main() -> None:
        def stop() -> None:
            service.stop()
            server.should_exit = True

        # uvicorn handles SIGINT/SIGTERM while it serves; when it stops, so does the loop
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            await serving
            raise ConfigError(f"monitor could not listen on {config.listen}")
        if on_ready is not None:
            on_ready(f"http://{config.listen}")
        watching = asyncio.create_task(service.run())
        syncing = asyncio.create_task(_sync_silences(service, watch))
        await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
        stop()
        syncing.cancel()
        await asyncio.gather(serving, watching, syncing, return_exceptions=True)

    try:
        with stop_on_signals():
            asyncio.run(main())
    finally:
        for receiver in receivers.values():
            receiver.notifier.close(timeout=5.0)
        with contextlib.suppress(TimeoutError):
            recorder.close()


# -- silences from the CLI: signed by the person who silences --


def create_silence(
    client: LedgerClient,
    signer: Signer,
    matchers: list[str],
    duration: str,
    comment: str,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Record ``monitor.silence``; every monitor on this ledger picks it up within
    seconds. The signer is the author."""
    try:
        seconds = parse_duration(duration)
    except PromQLError:
        raise InvalidInput(f"duration {duration!r}: e.g. 30m, 2h, 1d", field="duration") from None
    start = time.time() if now is None else now
    silence = new_silence(
        [parse_matcher(m) for m in matchers], start, start + seconds, signer.actor, comment
    )
    body = silence_body(silence)
    submit_signed(
        client, signer, signer.sign("monitor.silence", Subject("silence", silence.id), body)
    )
    return body


def schedule_maintenance(
    client: LedgerClient,
    signer: Signer,
    *,
    components: list[str],
    title: str,
    starts_at: str,
    ends_at: str,
    maintenance_id: str | None = None,
    cancelled: bool = False,
) -> dict[str, Any]:
    """Record ``monitor.maintenance`` (a new window, or a change to ``maintenance_id``)."""
    try:
        start, end = parse_ts(starts_at), parse_ts(ends_at)
    except ValueError:
        raise InvalidInput(
            "times are RFC 3339 UTC, e.g. 2026-11-22T10:00:00Z", field="start"
        ) from None
    if end <= start:
        raise InvalidInput("a maintenance window ends after it starts", field="end")
    if not components:
        raise InvalidInput("name at least one --component", field="component")
    ident = (
        maintenance_id
        or "MNT-"
        + hashlib.sha256(f"{title}\n{starts_at}\n{time.time_ns()}".encode()).hexdigest()[:10]
    )
    body: dict[str, Any] = {
        "id": ident,
        "title": title,
        "components": components,
        "starts_at": format_ts(start),
        "ends_at": format_ts(end),
    }
    if cancelled:
        body["cancelled"] = True
    submit_signed(
        client, signer, signer.sign("monitor.maintenance", Subject("maintenance", ident), body)
    )
    return body


def list_maintenance(client: LedgerClient) -> list[Maintenance]:
    rows = all_transactions(client, {"type": "monitor.maintenance"})
    return sorted(fold_maintenance(rows).values(), key=lambda w: w.starts_at)


def expire_silence(client: LedgerClient, signer: Signer, silence_id: str) -> None:
    known = fold_silences(_silence_rows(client))
    silence = known.get(silence_id)
    if silence is None:
        raise NotFound(f"no silence {silence_id}")
    if silence.ends_at <= time.time():
        raise Conflict(f"silence {silence_id} has already ended")
    body = {"id": silence_id, "by": signer.actor}
    stx = signer.sign("monitor.silence_expired", Subject("silence", silence_id), body)
    submit_signed(client, signer, stx)


def list_silences(client: LedgerClient, *, everything: bool = False) -> list[dict[str, Any]]:
    rows = silence_rows(
        fold_silences(_silence_rows(client)).values(),
        time.time(),
    )
    return rows if everything else [r for r in rows if r["state"] != "expired"]
