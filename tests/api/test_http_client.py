"""``HttpClient`` against a real ``serve`` process (uvicorn on a free 127.0.0.1 port),
checked call by call against ``LocalClient`` on the same ledger; error translation; and
the ``serve`` runner's life cycle (lock, serve.json, signals, bad addresses)."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from opsledger.api.server import parse_listen, serve
from opsledger.app import Home
from opsledger.client.base import Signer
from opsledger.client.http import HttpClient
from opsledger.client.local import LocalClient
from opsledger.core import (
    ConfigError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PrivateKey,
    Receipt,
    ReplayRejected,
    SignedTransaction,
    StorageError,
    Subject,
    UpstreamError,
    leaf_hash,
    open_checkpoint,
    verify_inclusion,
)

if TYPE_CHECKING:
    from .conftest import ServerProcess

MakeNote = Callable[..., SignedTransaction]


@pytest.fixture
def http(served: ServerProcess) -> Iterator[HttpClient]:
    with HttpClient(served.url) as client:
        yield client


@pytest.fixture
def open_reader(served: ServerProcess) -> Iterator[Callable[[], LocalClient]]:
    """Read-only in-process views of the same store, to compare answers with. A
    read-only node loads the head when opened, so open one after the writes."""
    opened: list[LocalClient] = []

    def open_reader() -> LocalClient:
        opened.append(LocalClient(served.home.open_node(writable=False)))
        return opened[-1]

    yield open_reader
    for client in opened:
        client.close()


@pytest.fixture
def admin(served: ServerProcess) -> Signer:
    return served.home.signer()


# -- the client against the server ---------------------------------------------------


def test_submit_then_read_everything_back_as_local_does(
    http: HttpClient,
    open_reader: Callable[[], LocalClient],
    served: ServerProcess,
    admin: Signer,
    make_note: MakeNote,
) -> None:
    stx = make_note(admin, "over http")
    receipt = http.submit(stx)
    assert isinstance(receipt, Receipt)
    assert receipt.tx_id == stx.tx_id

    reader = open_reader()
    assert http.head() == reader.head()
    assert http.get_transaction(stx.tx_id) == reader.get_transaction(stx.tx_id)
    with_proof = http.get_transaction(stx.tx_id, proof=True)
    assert with_proof == reader.get_transaction(stx.tx_id, proof=True)
    assert http.get_block(receipt.height) == reader.get_block(receipt.height)
    assert http.checkpoint() == reader.checkpoint()
    assert http.checkpoint(2) == reader.checkpoint(2)
    assert http.inclusion_proof(stx.tx_id) == reader.inclusion_proof(stx.tx_id)
    size = reader.head()["log_size"]
    assert http.consistency_proof(2, size) == reader.consistency_proof(2, size)
    assert http.actor("admin") == reader.actor("admin")
    filters = {"type": "note", "order": "desc", "limit": 5, "subject": None}
    assert http.list_transactions(filters) == reader.list_transactions(filters)

    name = served.home.config().node
    proof = with_proof["proof"]
    checkpoint = open_checkpoint(proof["checkpoint"], {name: served.home.load_key(name).public_key})
    verify_inclusion(
        receipt.leaf_index,
        checkpoint.size,
        leaf_hash(stx.leaf),
        [bytes.fromhex(h) for h in proof["hashes"]],
        checkpoint.root,
    )


def test_submit_many_gives_receipts_and_errors_in_order(
    http: HttpClient, admin: Signer, make_note: MakeNote
) -> None:
    first, second = make_note(admin, "a"), make_note(admin, "b")
    ghost = make_note(Signer("ghost", PrivateKey.generate(), ledger=admin.ledger), "boo")
    results = http.submit_many([first, ghost, second, first])
    assert [type(r) for r in results] == [Receipt, PermissionDenied, Receipt, ReplayRejected]
    assert isinstance(results[0], Receipt)
    assert isinstance(results[2], Receipt)
    assert results[2].leaf_index == results[0].leaf_index + 1
    assert http.submit_many([]) == []


def test_list_page_follows_the_cursor(http: HttpClient, admin: Signer, make_note: MakeNote) -> None:
    for i in range(3):
        http.submit(make_note(admin, f"page {i}"))
    seen = []
    filters: dict[str, object] = {"type": "note", "limit": 2}
    while True:
        items, cursor = http.list_page(filters)
        seen += items
        if cursor is None:
            break
        filters["after"] = cursor
    indexes = [item["leaf_index"] for item in seen]
    assert indexes == sorted(indexes)
    assert len(indexes) >= 3


def test_api_errors_come_back_as_our_classes(
    http: HttpClient, admin: Signer, make_note: MakeNote
) -> None:
    with pytest.raises(NotFound) as missing:
        http.get_transaction("0" * 64)
    assert missing.value.details == {"field": "tx_id"}
    with pytest.raises(InvalidInput, match="64 hex digits"):
        http.get_transaction("xyz")
    with pytest.raises((NotFound, InvalidInput)):  # escaped: never reaches /api/v1/head
        http.get_transaction("../head")
    with pytest.raises(NotFound):
        http.actor("no/such actor")
    with pytest.raises(NotFound):
        http.get_block(10**6)
    with pytest.raises(InvalidInput):
        http.consistency_proof(0, 1)
    with pytest.raises(InvalidInput):  # parameter validation (422) is InvalidInput too
        http.get_block(-1)
    stx = make_note(admin)
    http.submit(stx)
    with pytest.raises(ReplayRejected) as replay:
        http.submit(stx)
    assert replay.value.details["field"] == "nonce"
    with pytest.raises(PermissionDenied):
        http.submit(make_note(Signer("ghost", PrivateKey.generate(), ledger=admin.ledger)))


def test_home_finds_the_server(served: ServerProcess) -> None:
    assert served.home.server_url() == served.url
    client = served.home.client()
    try:
        assert isinstance(client, HttpClient)
        assert client.head()["genesis_hash"]
    finally:
        client.close()
    with pytest.raises(ConfigError, match="another opsledger process"):
        served.home.open_node()


# -- transport failures and foreign bodies -------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_an_upstream_error() -> None:
    with HttpClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(UpstreamError) as caught:
            client.head()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def mock(status: int, content: bytes, content_type: str = "application/json") -> HttpClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"content-type": content_type})

    return HttpClient("http://ledger.test", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (502, b"<html>bad gateway</html>", UpstreamError),
        (500, b'{"error": {"code": "internal_error", "message": "x"}}', UpstreamError),
        (503, b'{"error": {"code": "storage_error", "message": "x"}}', StorageError),
        (404, b'{"error": {"code": "brand_new_code", "message": "x"}}', NotFound),
        (413, b'{"error": {"code": "payload_too_large", "message": "x"}}', InvalidInput),
        (400, b'{"detail": "not our shape"}', UpstreamError),
        (200, b"not json", UpstreamError),
    ],
)
def test_foreign_answers(status: int, content: bytes, expected: type[Exception]) -> None:
    with mock(status, content) as client, pytest.raises(expected) as caught:
        client.head()
    assert type(caught.value) is expected


def test_a_malformed_batch_answer_is_an_upstream_error(admin: Signer, make_note: MakeNote) -> None:
    with mock(200, b'{"results": [{"tx_id": "x"}]}') as client:
        with pytest.raises(UpstreamError):
            client.submit_many([make_note(admin)])
    with mock(200, b'{"results": []}') as client:
        with pytest.raises(UpstreamError):
            client.submit_many([make_note(admin)])


# -- the serve runner -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8700", ("127.0.0.1", 8700)),
        (":8700", ("127.0.0.1", 8700)),
        ("8700", ("127.0.0.1", 8700)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    "listen", ["", "127.0.0.1", "127.0.0.1:", "host:http", "1:2:3", "[::1]", "h:70000", "a b:1"]
)
def test_bad_listen_values_are_config_errors(listen: str, home: Home) -> None:
    with pytest.raises(ConfigError):
        serve(home, listen)
    home.open_node().close()  # nothing was left locked


def test_a_busy_port_is_a_config_error_and_releases_the_lock(home: Home) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            serve(home, f"127.0.0.1:{port}")
    home.open_node().close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_cleanly(
    sig: int, home: Home, start_server: Callable[[Home], ServerProcess]
) -> None:
    server = start_server(home)
    info = json.loads(home.serve_path.read_text())
    assert info == {"url": server.url, "pid": server.proc.pid if server.proc else None}
    assert server.url.startswith("http://127.0.0.1:")
    assert server.stop(sig) == 0, server.log()
    assert not home.serve_path.exists()
    assert home.server_url() is None
    home.open_node().close()  # the lock was released
    assert "Traceback" not in server.log()


def test_a_second_server_on_the_same_home_is_refused(
    home: Home, start_server: Callable[[Home], ServerProcess]
) -> None:
    first = start_server(home)
    with pytest.raises(RuntimeError, match="another opsledger process"):
        start_server(home)
    assert json.loads(home.serve_path.read_text())["url"] == first.url


def test_submit_as_a_registered_actor_over_http(
    http: HttpClient, admin: Signer, served: ServerProcess
) -> None:
    key = PrivateKey.generate()
    body = {"actor": "ci-1", "public_key": key.public_key.b64, "roles": ["ci"], "kind": "service"}
    http.submit(admin.sign("identity.key_added", Subject("actor", "ci-1"), body))
    ci = Signer("ci-1", key, ledger=admin.ledger)
    build = {
        "artifact": "app",
        "digest": "sha256:" + "ab" * 32,
        "commit": "c1",
        "status": "success",
    }
    receipt = http.submit(
        ci.sign("build.finished", Subject("artifact", "sha256:" + "ab" * 32), build)
    )
    assert http.get_transaction(receipt.tx_id)["transaction"]["actor"] == "ci-1"
    assert http.actor("ci-1")["roles"] == ["ci"]
