"""The monitor's HTTP face: ``/metrics``, the status page and its JSON, Alertmanager's
webhook, and the active alerts. Listens on 127.0.0.1 unless configured otherwise.

The status page is server-rendered HTML with inline CSS and no script, so it loads
anywhere, caches well and shows the same thing with JavaScript disabled.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from opsledger.core.encoding import parse_json
from opsledger.core.errors import InvalidInput
from opsledger.monitor.series import SeriesCollector
from opsledger.monitor.service import MonitorService

__all__ = ["create_app", "render_status_page"]

StatusSource = Callable[[], dict[str, Any]]

_LABELS = {
    "operational": "Operational",
    "degraded": "Degraded performance",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
    "maintenance": "Under maintenance",
}
_BANNER = {
    "operational": "All systems operational",
    "degraded": "Some systems are degraded",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
    "maintenance": "Scheduled maintenance in progress",
}
_CSS = (resources.files("opsledger.monitor") / "status.css").read_text()


def _bar_class(uptime: float) -> str:
    if uptime >= 0.999:
        return "bar"
    return "bar warn" if uptime >= 0.95 else "bar bad"


def render_status_page(doc: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for component in doc["components"]:
        bars = "".join(
            f'<div class="{_bar_class(day["uptime"])}" title="{esc(day["date"])}: '
            f'{day["uptime"] * 100:.2f}% uptime"></div>'
            for day in component["days"]
        )
        rows.append(
            f'<div class="row" data-component="{esc(component["name"])}" '
            f'data-state="{esc(component["state"])}">'
            f'<span class="name">{esc(component["name"])}</span>'
            f'<span class="state {esc(component["state"])}">'
            f"{esc(_LABELS[component['state']])}</span>"
            f'<div class="bars">{bars}</div><div class="legend"><span>90 days ago</span>'
            f"<span>{component['uptime_90d'] * 100:.3f}% uptime</span>"
            "<span>Today</span></div></div>"
        )
    incidents = []
    for incident in doc["incidents"]:
        updates = "".join(
            f'<p class="update"><span class="muted">{esc(u["ts"])}</span> {esc(u["text"])}</p>'
            for u in reversed(incident["updates"])
        )
        incidents.append(
            f'<div class="row incident" data-incident="{esc(incident["id"])}">'
            f'<span class="name">{esc(incident["title"])}</span>'
            f'<span class="state major_outage">{esc(incident["state"].capitalize())}</span>'
            f'<div class="muted">Opened {esc(incident["opened_at"])}</div>{updates}</div>'
        )
    past = "".join(
        f'<div class="row"><span class="name">{esc(i["title"])}</span>'
        f'<span class="state operational">Resolved</span>'
        f'<div class="muted">{esc(i["opened_at"])} to {esc(i["resolved_at"] or "")}</div></div>'
        for i in doc["recent_incidents"]
    )
    active = (
        f'<h2>Active incidents</h2><div class="card">{"".join(incidents)}</div>'
        if incidents
        else ""
    )
    history = f'<h2>Past incidents</h2><div class="card">{past}</div>' if past else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(doc['title'])}</title>"
        '<link rel="alternate" type="application/atom+xml" href="/status/feed.atom">'
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>{esc(doc['title'])}</h1>"
        f'<div class="banner {esc(doc["status"])}" id="overall">{esc(_BANNER[doc["status"]])}</div>'
        f"{active}"
        f'<div class="card" id="components">{"".join(rows)}</div>'
        f"{history}"
        f'<footer>Updated {esc(doc["updated"])} · <a href="/api/v1/status">JSON</a> · '
        '<a href="/status/feed.atom">Atom feed</a></footer>'
        "</main></body></html>"
    )


def render_feed(doc: dict[str, Any]) -> str:
    esc = html.escape
    entries = []
    for incident in doc["incidents"] + doc["recent_incidents"]:
        latest = incident["updates"][-1]["text"] if incident["updates"] else incident["state"]
        updated = incident["resolved_at"] or (
            incident["updates"][-1]["ts"] if incident["updates"] else incident["opened_at"]
        )
        entries.append(
            f"<entry><id>urn:opsledger:incident:{esc(incident['id'])}</id>"
            f"<title>{esc(incident['title'])}</title><updated>{esc(updated)}</updated>"
            f"<summary>{esc(latest)}</summary></entry>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f"<title>{esc(doc['title'])}</title><id>urn:opsledger:status</id>"
        f"<updated>{esc(doc['updated'])}</updated>{''.join(entries)}</feed>"
    )


def create_app(service: MonitorService, status: StatusSource) -> Starlette:
    registry = CollectorRegistry()
    registry.register(SeriesCollector(service.store))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def status_json(_: Request) -> Response:
        return JSONResponse(status())

    async def status_page(_: Request) -> Response:
        return HTMLResponse(render_status_page(status()))

    async def feed(_: Request) -> Response:
        return Response(render_feed(status()), media_type="application/atom+xml")

    async def alerts(_: Request) -> Response:
        firing = [
            {
                "alert": a.rule.alert,
                "labels": dict(a.labels),
                "annotations": a.annotations(),
                "value": a.value if a.value == a.value else None,
                "fired_at": datetime.fromtimestamp(a.fired_at or 0, UTC).isoformat(),
            }
            for a in service.firing()
        ]
        return JSONResponse({"firing": firing, "history": service.history[-50:]})

    async def alertmanager(request: Request) -> Response:
        body = await request.body()
        if len(body) > 1_000_000:
            return JSONResponse({"error": {"code": "too_large", "message": "body over 1 MB"}}, 413)
        try:
            count = service.ingest_alertmanager(parse_json(body))
        except (InvalidInput, ValueError) as exc:
            message = getattr(exc, "message", str(exc))
            return JSONResponse({"error": {"code": "invalid_input", "message": message}}, 400)
        return JSONResponse({"accepted": count})

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/status", status_page),
            Route("/status/feed.atom", feed),
            Route("/api/v1/status", status_json),
            Route("/api/v1/alerts", alerts),
            Route("/api/v1/alertmanager", alertmanager, methods=["POST"]),
        ]
    )
