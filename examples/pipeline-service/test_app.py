"""Unit tests of the sample service (run by the pipeline's ``unit`` job)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

import app


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), app.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_root_names_the_version(url: str) -> None:
    with urllib.request.urlopen(url + "/", timeout=5) as response:  # noqa: S310 - local URL
        assert json.loads(response.read()) == {"service": "shop", "version": app.VERSION}


def test_unknown_paths_answer_too(url: str) -> None:
    with urllib.request.urlopen(url + "/cart", timeout=5) as response:  # noqa: S310
        assert response.status == 200
