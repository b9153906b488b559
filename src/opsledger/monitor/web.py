"""The monitor's HTTP face: ``/metrics``, the status page and its JSON, Alertmanager's
webhook, and the active alerts. Listens on 127.0.0.1 unless configured otherwise.

The status page is server-rendered HTML with inline CSS and no script, so it loads
anywhere, caches well and shows the same thing with JavaScript disabled.
"""

from __future__ import annotations

import hmac
import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from opsledger.core.encoding import parse_json
from opsledger.core.errors import ConfigError, InvalidInput
from opsledger.monitor.promql import PromQLError, parse_duration
from opsledger.monitor.series import SeriesCollector
from opsledger.monitor.service import MonitorService
from opsledger.monitor.silences import new_silence, silence_body, silence_rows
from opsledger.monitor.targets import target_from_spec, target_spec
from opsledger.notify import redact_url
from opsledger.notify.routing import Silence, parse_matcher

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
    windows = "".join(
        f'<div class="row maintenance" data-maintenance="{esc(w["id"])}">'
        f'<span class="name">{esc(w["title"])}</span>'
        f'<span class="state maintenance">'
        f"{'In progress' if w['state'] == 'in_progress' else 'Scheduled'}</span>"
        f'<div class="muted">{esc(w["starts_at"])} to {esc(w["ends_at"])} · '
        f"{esc(', '.join(w['components']))}</div></div>"
        for w in doc.get("maintenance", [])
    )
    scheduled = (
        f'<h2>Scheduled maintenance</h2><div class="card">{windows}</div>' if windows else ""
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
        f"{active}{scheduled}"
        f'<div class="card" id="components">{"".join(rows)}</div>'
        f"{history}"
        f'<footer>Updated {esc(doc["updated"])} · <a href="/api/v1/status">JSON</a> · '
        '<a href="/status/feed.atom">Atom feed</a></footer>'
        "</main></body></html>"
    )


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """A target without credentials in its URL (provider keys often live in the path or
    query), for the read-only listing."""
    if spec.get("url"):
        spec = {**spec, "url": redact_url(str(spec["url"]))}
    return spec


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


def _silence_from(raw: Any, now: float) -> Silence:
    if not isinstance(raw, dict):
        raise InvalidInput("a JSON object with matchers, duration, created_by and comment")
    matchers = raw.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise InvalidInput("matchers: a list such as ['alertname=NodeHeadLag']")
    author = raw.get("created_by")
    if not isinstance(author, str) or not author.strip():
        raise InvalidInput("created_by: who is silencing")
    if "ends_at" in raw:
        ends = datetime.fromisoformat(str(raw["ends_at"]).replace("Z", "+00:00")).timestamp()
    else:
        try:
            ends = now + parse_duration(str(raw.get("duration", "")))
        except PromQLError:
            raise InvalidInput("duration: e.g. 30m or 2h (or give ends_at)") from None
    return new_silence(
        [parse_matcher(m) for m in matchers], now, ends, author, str(raw.get("comment", ""))
    )


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = JSONResponse({"error": {"code": code, "message": message}}, status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes while it streams (never buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, "too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_writer(request: Request, token: str | None) -> None:
    """Every route that changes something needs the monitor's API token (bearer), and a
    JSON content type, so a web page in an operator's browser cannot post to it."""
    if token is None:
        raise _Refused(
            403,
            "disabled",
            "the monitor's write API is off: set the token in $OPSLEDGER_MONITOR_TOKEN"
            " (or the variable named by monitor.api_token_env)",
        )
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise _Refused(401, "unauthorized", "a valid 'Authorization: Bearer <token>' is needed")
    if request.method == "POST":
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise _Refused(415, "unsupported_media_type", "send application/json")


def create_app(
    service: MonitorService, status: StatusSource, *, api_token: str | None = None
) -> Starlette:
    """``api_token`` guards every route that changes state (silences, targets, the
    Alertmanager receiver); without one those routes answer 403."""
    registry = CollectorRegistry()
    registry.register(SeriesCollector(service.store))

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                _check_writer(request, api_token)
                return await handler(request)
            except _Refused as refused:
                return refused.response

        return run

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
        body = await _read_body(request, 1_000_000)
        try:
            count = service.ingest_alertmanager(parse_json(body))
        except (InvalidInput, ValueError) as exc:
            message = getattr(exc, "message", str(exc))
            return JSONResponse({"error": {"code": "invalid_input", "message": message}}, 400)
        return JSONResponse({"accepted": count})

    async def list_silences(_: Request) -> Response:
        rows = silence_rows(service.router.silences.values(), service.clock())
        return JSONResponse({"silences": rows})

    async def create_silence(request: Request) -> Response:
        """``{matchers: ["alertname=NodeHeadLag"], duration: "2h" | ends_at, created_by,
        comment}``: recorded on the ledger as ``monitor.silence`` by the monitor's actor,
        with the author named in the body."""
        body = await _read_body(request, 100_000)
        try:
            silence = _silence_from(parse_json(body), service.clock())
        except (InvalidInput, ValueError) as exc:
            message = getattr(exc, "message", str(exc))
            return JSONResponse({"error": {"code": "invalid_input", "message": message}}, 400)
        service.add_silence(silence)
        return JSONResponse({"silence": silence_body(silence)}, 201)

    async def expire_silence(request: Request) -> Response:
        ident = request.path_params["ident"]
        if not service.expire_silence(ident, by=request.query_params.get("by", "")):
            message = f"no active silence {ident}"
            return JSONResponse({"error": {"code": "not_found", "message": message}}, 404)
        return JSONResponse({"expired": ident})

    async def list_targets(_: Request) -> Response:
        rows = [
            {**_redacted(target_spec(t)), "last": service.last_results.get(t.name)}
            for t in service.config.targets
        ]
        return JSONResponse({"vantage": service.config.vantage, "targets": rows})

    async def add_target(request: Request) -> Response:
        """A target as in the config file, plus an optional ``by`` (who adds it)."""
        body = await _read_body(request, 100_000)
        try:
            raw = parse_json(body)
            if not isinstance(raw, dict):
                raise InvalidInput("a JSON object: a target as in the config file")
            by = str(raw.pop("by", ""))
            target = target_from_spec(raw, service.config)
        except (InvalidInput, ConfigError, ValueError, TypeError) as exc:
            message = getattr(exc, "message", str(exc))
            return JSONResponse({"error": {"code": "invalid_input", "message": message}}, 400)
        service.add_target(target, by=by)
        return JSONResponse({"target": target_spec(target)}, 201)

    async def remove_target(request: Request) -> Response:
        name = request.path_params["name"]
        if not service.remove_target(name, by=request.query_params.get("by", "")):
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no target {name}"}}, 404
            )
        return JSONResponse({"removed": name})

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/status", status_page),
            Route("/status/feed.atom", feed),
            Route("/api/v1/status", status_json),
            Route("/api/v1/alerts", alerts),
            Route("/api/v1/alertmanager", guarded(alertmanager), methods=["POST"]),
            Route("/api/v1/silences", list_silences, methods=["GET"]),
            Route("/api/v1/silences", guarded(create_silence), methods=["POST"]),
            Route("/api/v1/silences/{ident}", guarded(expire_silence), methods=["DELETE"]),
            Route("/api/v1/targets", list_targets, methods=["GET"]),
            Route("/api/v1/targets", guarded(add_target), methods=["POST"]),
            Route("/api/v1/targets/{name}", guarded(remove_target), methods=["DELETE"]),
        ]
    )
