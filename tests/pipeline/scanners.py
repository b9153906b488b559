"""Real scanner runs for the pipeline tests: a local OSV server for pip-audit, and the
procedure that captured the fixtures in ``fixtures/``.

pip-audit needs a vulnerability database. Its default (the PyPI JSON API per version,
``/pypi/<name>/<version>/json``) and OSV (``api.osv.dev``) are not reachable from the
machines these tests run on, so ``pip-audit`` here skips every dependency
(``fixtures/pip_audit_unreachable.json`` is that real output). pip-audit's own
``--osv-url`` option points it at any OSV-compatible endpoint instead, so the tests run the
real tool against ``osv_server``, which answers from ``fixtures/osv_advisories.json``: the
advisories PyPI itself publishes for the latest release of each pinned package (the
``vulnerabilities`` list of ``/pypi/<name>/json``), converted to OSV records. Only the real
tool, real advisories, and no network at test time.

Regenerate the fixtures (needs pypi.org) with::

    .venv/bin/python tests/pipeline/scanners.py
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-service"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A scanner from the project venv (installed by the ``dev`` extra), else from PATH."""
    local = BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: pip install -e '.[dev]'")
    return found


Advisories = dict[str, dict[str, list[dict[str, Any]]]]
"""package name -> version -> OSV records."""


@contextlib.contextmanager
def osv_server(advisories: Advisories) -> Iterator[str]:
    """An OSV ``/v1/query`` endpoint on 127.0.0.1; yields its URL. Unknown package or
    version: 404, so pip-audit fails loudly instead of reporting a clean package."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            query = json.loads(self.rfile.read(length))
            name, version = query["package"]["name"], query["version"]
            records = advisories.get(name, {}).get(version)
            status, body = (404, b"{}") if records is None else (200, _vulns(records))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _vulns(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"vulns": records} if records else {}).encode()


def pip_audit_argv(osv_url: str, cache_dir: Path) -> list[str]:
    return [
        tool("pip-audit"),
        "-r",
        "requirements.txt",
        "--no-deps",
        "--disable-pip",
        "--progress-spinner",
        "off",
        "--vulnerability-service",
        "osv",
        "--osv-url",
        osv_url,
        "--cache-dir",
        str(cache_dir),
        "--aliases",
        "on",
        "-f",
        "json",
    ]


def bandit_argv() -> list[str]:
    return [tool("bandit"), "-r", "inventory", "-f", "json", "-q"]


def _pinned(requirements: Path) -> list[tuple[str, str]]:
    pins = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins.append((name.strip().lower(), version.strip()))
    return pins


def _osv_record(name: str, advisory: dict[str, Any]) -> dict[str, Any]:
    """PyPI's advisory shape to an OSV record (what pip-audit's OSV service reads)."""
    events: list[dict[str, str]] = [{"introduced": "0"}]
    events += [{"fixed": version} for version in advisory.get("fixed_in") or []]
    record: dict[str, Any] = {
        "id": advisory["id"],
        "aliases": advisory.get("aliases") or [],
        "details": advisory.get("details") or "",
        "affected": [
            {
                "package": {"name": name, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }
    if advisory.get("summary"):
        record["summary"] = advisory["summary"]
    if advisory.get("withdrawn"):
        record["withdrawn"] = advisory["withdrawn"]
    return record


def fetch_advisories(requirements: Path) -> Advisories:
    """What PyPI publishes for each pin; a pin that is not the latest release is refused
    (PyPI's project JSON lists advisories for the latest release only)."""
    advisories: Advisories = {}
    for name, version in _pinned(requirements):
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as resp:
            project = json.load(resp)
        latest = project["info"]["version"]
        if latest != version:
            raise RuntimeError(f"{name}=={version} is not the latest release ({latest})")
        records = [_osv_record(name, a) for a in project.get("vulnerabilities") or []]
        advisories[name] = {version: records}
    return advisories


def capture() -> None:
    """Run the real tools on the sample service and save their JSON output."""
    FIXTURES.mkdir(exist_ok=True)
    advisories = fetch_advisories(SAMPLE / "requirements.txt")
    (FIXTURES / "osv_advisories.json").write_text(json.dumps(advisories, indent=2) + "\n")
    cache = FIXTURES / ".pip-audit-cache"
    with osv_server(advisories) as url:
        out = subprocess.run(
            pip_audit_argv(url, cache), cwd=SAMPLE, capture_output=True, check=False
        )
    shutil.rmtree(cache, ignore_errors=True)
    (FIXTURES / "pip_audit.json").write_bytes(out.stdout)
    unreachable = subprocess.run(
        [tool("pip-audit"), "-r", "requirements.txt", "--no-deps", "--disable-pip", "-f", "json"],
        cwd=SAMPLE,
        capture_output=True,
        check=False,
    )
    (FIXTURES / "pip_audit_unreachable.json").write_bytes(unreachable.stdout)
    scan = subprocess.run(bandit_argv(), cwd=SAMPLE, capture_output=True, check=False)
    (FIXTURES / "bandit.json").write_bytes(scan.stdout)


if __name__ == "__main__":
    capture()
