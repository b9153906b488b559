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
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from opsledger.app.config import load_section
from opsledger.app.home import Home
from opsledger.app.signals import stop_on_signals
from opsledger.client.base import NullRecorder, Recorder, all_transactions
from opsledger.core import ConfigError, format_ts
from opsledger.monitor.config import MonitorConfig, parse_monitor_config
from opsledger.monitor.incidents import fold_incidents
from opsledger.monitor.rules import Rule
from opsledger.monitor.service import MonitorService, NotifyRoute, build_rules
from opsledger.monitor.statuspage import status_document, uptime_days
from opsledger.monitor.web import create_app
from opsledger.notify import DELIVERY_LOG, Notifier, load_notify_targets

__all__ = ["load_monitor", "run_monitor"]

_NOTIFY_KINDS = ("webhook", "slack")


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


def _routes(config: MonitorConfig, home: Home | None) -> list[NotifyRoute]:
    routes = []
    for index, entry in enumerate(config.notify):
        where = f"monitor.notify[{index}]"
        kind = entry.get("kind", "webhook")
        if kind not in _NOTIFY_KINDS:
            raise ConfigError(
                f"{where}.kind: {kind!r} is not supported yet (use {' or '.join(_NOTIFY_KINDS)})",
                key=f"{where}.kind",
            )
        match = entry.get("match") or {}
        if not isinstance(match, dict):
            raise ConfigError(f"{where}.match: a mapping of label: value", key=f"{where}.match")
        target = {k: v for k, v in entry.items() if k != "match"}
        (webhook,) = load_notify_targets({"targets": [target]}, where="monitor.notify")
        log_path = home.path / DELIVERY_LOG if home is not None else None
        routes.append(
            NotifyRoute(
                Notifier([webhook], log_path=log_path), {str(k): str(v) for k, v in match.items()}
            )
        )
    return routes


class _LedgerStatus:
    """Status page data with the ledger part cached (it changes slowly)."""

    def __init__(self, service: MonitorService, home: Home | None, ttl: float = 5.0) -> None:
        self.service = service
        self.home = home
        self.ttl = ttl
        self._cached: tuple[float, list[Any], dict[str, Any]] | None = None

    def _ledger(self, now: datetime) -> tuple[list[Any], dict[str, Any]]:
        if self.home is None:
            return [], uptime_days(self.service.config, self.service.alert_rows(), now)
        if self._cached and time.monotonic() - self._cached[0] < self.ttl:
            return self._cached[1], self._cached[2]
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
        finally:
            client.close()
        uptime = uptime_days(self.service.config, alerts, now)
        self._cached = (time.monotonic(), incidents, uptime)
        return incidents, uptime

    def __call__(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        incidents, uptime = self._ledger(now)
        return status_document(self.service.config, self.service.firing(), incidents, uptime, now)


def run_monitor(
    config: MonitorConfig,
    rules: list[Rule],
    home: Home | None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM."""
    recorder: Recorder = home.recorder(home.config().node) if home is not None else NullRecorder()
    routes = _routes(config, home)
    service = MonitorService(config, rules=rules, recorder=recorder, routes=routes)
    app = create_app(service, _LedgerStatus(service, home))
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
        await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(serving, watching, return_exceptions=True)

    try:
        with stop_on_signals():
            asyncio.run(main())
    finally:
        for route in routes:
            route.notifier.close(timeout=5.0)
        with contextlib.suppress(TimeoutError):
            recorder.close()
