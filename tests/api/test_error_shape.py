"""Every error answers with its status and the one JSON shape, and a refused write
changes nothing (as datasette's ``test_error_shape.py`` holds its API to one shape)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI

from opsledger.api.errors import status_for
from opsledger.client.base import LedgerClient, Signer
from opsledger.client.http import ERROR_CLASSES, error_from_body
from opsledger.client.local import LocalClient
from opsledger.core import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OpsledgerError,
    PermissionDenied,
    PrivateKey,
    ProofError,
    ReplayRejected,
    SchemaError,
    SignedTransaction,
    StorageError,
    Subject,
    UnknownType,
    UpstreamError,
    VerificationFailed,
)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

MakeNote = Callable[..., SignedTransaction]
Register = Callable[[LedgerClient, Signer, str, list[str]], Signer]


def assert_error(response: Any, status: int, code: str, **details: Any) -> dict[str, Any]:
    """The one shape: ``{"error": {"code", "message", ...details}}`` and nothing else."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["code"] == code, error
    for key, value in details.items():
        assert error[key] == value, (key, error)
    assert "Traceback" not in response.text
    return dict(error)


def state(api: TestClient) -> tuple[Any, Any]:
    """What a refused write must not change: the head and the whole list."""
    head = api.get("/api/v1/head").json()
    listing = api.get("/api/v1/transactions", params={"limit": 1000}).json()
    return head, listing


# -- refused writes -----------------------------------------------------------------


def _unsigned_with(stx: SignedTransaction, **changes: Any) -> bytes:
    obj = {**stx.to_dict(), **changes}
    return json.dumps(obj).encode()


def write_cases(
    signer: Signer, make_note: MakeNote, local_client: LocalClient, register_actor: Register
) -> Iterator[tuple[str, bytes, int, str, dict[str, Any]]]:
    """(name, body, status, code, details) for every way a write is refused."""
    stx = make_note(signer)
    yield "bad json", b'{"v": 1,', 400, "invalid_input", {}
    yield "empty body", b"", 400, "invalid_input", {}
    yield "not an object", b"[1, 2]", 400, "invalid_input", {"field": "transaction"}
    yield "nan", b'{"v": NaN}', 400, "invalid_input", {}
    yield (
        "duplicate key",
        stx.leaf[:-1] + b',"v":1}',
        400,
        "invalid_input",
        {"field": "v"},
    )
    unsigned = {k: v for k, v in stx.to_dict().items() if k != "sig"}
    yield "unsigned", json.dumps(unsigned).encode(), 400, "invalid_input", {"field": "sig"}
    yield (
        "schema: missing field",
        json.dumps({k: v for k, v in stx.to_dict().items() if k != "ts"}).encode(),
        400,
        "schema_error",
        {"field": "transaction"},
    )
    yield (
        "schema: bad body",
        _unsigned_with(stx, body={"text": 5}),
        400,
        "schema_error",
        {"field": "body.text"},
    )
    yield (
        "unknown type",
        _unsigned_with(stx, type="made.up"),
        400,
        "unknown_type",
        {"field": "type"},
    )
    yield (
        "sig not base64",
        _unsigned_with(stx, sig="!" * 86 + "=="),
        400,
        "schema_error",
        {"field": "sig"},
    )
    tampered = _unsigned_with(stx, body={"text": "tampered"})
    yield "bad signature", tampered, 403, "permission_denied", {"field": "sig"}

    stranger = PrivateKey.generate()
    ghost = Signer("ghost", stranger, ledger=signer.ledger).sign(
        "note", Subject("test", "api"), {"text": "boo"}
    )
    yield "unknown actor", ghost.leaf, 403, "permission_denied", {"field": "actor"}
    wrong_key = Signer("admin", stranger, ledger=signer.ledger).sign(
        "note", Subject("t", "x"), {"text": "x"}
    )
    yield "key of someone else", wrong_key.leaf, 403, "permission_denied", {"field": "key_id"}

    auditor = register_actor(local_client, signer, "auditor-1", ["auditor"])
    body = {"artifact": "a", "digest": "sha256:" + "0" * 64, "commit": "c", "status": "success"}
    forbidden = auditor.sign("build.finished", Subject("artifact", "x"), body)
    yield "role", forbidden.leaf, 403, "permission_denied", {"field": "type"}

    once = make_note(signer, "once")
    local_client.submit(once)
    yield "replay", once.leaf, 409, "replay_rejected", {"field": "nonce"}
    yield "too large", b"{" + b" " * (1 << 20) + b"}", 413, "payload_too_large", {}


def test_every_refused_write_has_its_status_and_shape_and_changes_nothing(
    api: TestClient,
    signer: Signer,
    make_note: MakeNote,
    local_client: LocalClient,
    register_actor: Register,
) -> None:
    cases = list(write_cases(signer, make_note, local_client, register_actor))
    before = state(api)
    for name, body, status, code, details in cases:
        response = api.post("/api/v1/transactions", content=body)
        try:
            assert_error(response, status, code, **details)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc
        assert state(api) == before, name


def test_a_streamed_body_over_the_limit_is_cut_off(api: TestClient) -> None:
    """No Content-Length (chunked): the limit holds while reading."""

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    response = api.post("/api/v1/transactions", content=chunks())
    assert_error(response, 413, "payload_too_large", limit=1 << 20)


def test_batch_level_errors(api: TestClient) -> None:
    before = state(api)
    assert_error(api.post("/api/v1/transactions/batch", content=b"{}"), 400, "invalid_input")
    assert_error(api.post("/api/v1/transactions/batch", content=b"[1,"), 400, "invalid_input")
    too_many = b"[" + b",".join([b"{}"] * 10_001) + b"]"
    assert_error(api.post("/api/v1/transactions/batch", content=too_many), 413, "payload_too_large")
    assert state(api) == before


# -- reads and parameters -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "field"),
    [
        ("/api/v1/transactions/" + "0" * 64, {}, 404, "not_found", "tx_id"),
        ("/api/v1/transactions/xyz", {}, 400, "invalid_input", "tx_id"),
        ("/api/v1/transactions/" + "g" * 64, {}, 400, "invalid_input", "tx_id"),
        ("/api/v1/proofs/inclusion/" + "0" * 64, {}, 404, "not_found", "tx_id"),
        ("/api/v1/proofs/inclusion/nothex", {}, 400, "invalid_input", "tx_id"),
        ("/api/v1/blocks/7", {}, 404, "not_found", "height"),
        ("/api/v1/blocks/-1", {}, 422, "invalid_input", "height"),
        ("/api/v1/blocks/x", {}, 422, "invalid_input", "height"),
        ("/api/v1/blocks/99999999999999999999999", {}, 422, "invalid_input", "height"),
        ("/api/v1/checkpoint", {"size": 1}, 404, "not_found", "size"),
        ("/api/v1/checkpoint", {"size": "x"}, 422, "invalid_input", "size"),
        ("/api/v1/proofs/consistency", {"first": 0, "second": 2}, 400, "invalid_input", "first"),
        ("/api/v1/proofs/consistency", {"first": 2, "second": 1}, 400, "invalid_input", "first"),
        ("/api/v1/proofs/consistency", {"first": 1, "second": 2}, 404, "not_found", "size"),
        ("/api/v1/proofs/consistency", {"first": 2}, 422, "invalid_input", "second"),
        ("/api/v1/actors/nobody", {}, 404, "not_found", "actor"),
        ("/api/v1/transactions", {"limit": 0}, 422, "invalid_input", "limit"),
        ("/api/v1/transactions", {"limit": 1001}, 422, "invalid_input", "limit"),
        ("/api/v1/transactions", {"order": "up"}, 422, "invalid_input", "order"),
        ("/api/v1/transactions", {"after": -1}, 422, "invalid_input", "after"),
        ("/api/v1/transactions", {"subject": "kind:"}, 400, "invalid_input", "subject"),
    ],
)
def test_read_errors(
    api: TestClient, path: str, params: dict[str, Any], status: int, code: str, field: str
) -> None:
    assert_error(api.get(path, params=params), status, code, field=field)


def test_unknown_route_and_method(api: TestClient) -> None:
    assert_error(api.get("/api/v1/nothing"), 404, "not_found")
    assert_error(api.delete("/api/v1/head"), 405, "method_not_allowed")


# -- errors raised from inside: every class, through a route ------------------------

EVERY_CLASS: list[tuple[OpsledgerError, int, str]] = [
    (InvalidInput("bad", field="x"), 400, "invalid_input"),
    (SchemaError("bad", field="body.x"), 400, "schema_error"),
    (UnknownType("what"), 400, "unknown_type"),
    (PermissionDenied("no"), 403, "permission_denied"),
    (NotFound("gone"), 404, "not_found"),
    (Conflict("clash"), 409, "conflict"),
    (ReplayRejected("again"), 409, "replay_rejected"),
    (
        VerificationFailed("broken", height=3, expected="aa", computed="bb"),
        422,
        "verification_failed",
    ),
    (ProofError("no root", index=1, size=2), 422, "proof_error"),
    (UpstreamError("peer down"), 502, "upstream_error"),
    (StorageError("disk full"), 503, "storage_error"),
]


@pytest.fixture
def raising(
    app: FastAPI, local_client: LocalClient, monkeypatch: pytest.MonkeyPatch
) -> Callable[[BaseException], TestClient]:
    """A client whose ``GET /api/v1/head`` raises the exception given."""
    from fastapi.testclient import TestClient

    def make(exc: BaseException) -> TestClient:
        def boom() -> Any:
            raise exc

        monkeypatch.setattr(local_client, "head", boom)
        return TestClient(app, raise_server_exceptions=False)

    return make


@pytest.mark.parametrize(("exc", "status", "code"), EVERY_CLASS, ids=[c for _, _, c in EVERY_CLASS])
def test_every_error_class_maps_to_its_status(
    raising: Callable[[BaseException], TestClient], exc: OpsledgerError, status: int, code: str
) -> None:
    error = assert_error(raising(exc).get("/api/v1/head"), status, code)
    assert error == exc.to_dict()
    assert status_for(exc) == status
    back = error_from_body(status, {"error": error})
    assert type(back) is type(exc)
    assert back is not None
    assert back.details == exc.details


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("secret /etc/opsledger path"),
        ConfigError("secret key file /root/k"),
        OpsledgerError("secret bare error"),
        KeyError("secret"),
    ],
)
def test_anything_else_is_a_generic_500(
    raising: Callable[[BaseException], TestClient], exc: BaseException
) -> None:
    response = raising(exc).get("/api/v1/head")
    error = assert_error(response, 500, "internal_error")
    assert error == {"code": "internal_error", "message": "internal server error"}
    assert "secret" not in response.text


def test_readyz_is_503_when_the_store_fails(
    api: TestClient, local_client: LocalClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise StorageError("database is locked")

    monkeypatch.setattr(local_client.node.store, "head", broken)
    assert_error(api.get("/readyz"), 503, "storage_error")
    assert api.get("/healthz").status_code == 200


def test_every_core_code_maps_back_to_its_class() -> None:
    """The HTTP client knows every code of ``core.errors``."""
    import opsledger.core.errors as errors

    classes = {
        getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), OpsledgerError)
    }
    assert {cls.code: cls for cls in classes} == {
        code: cls for code, cls in ERROR_CLASSES.items() if cls in classes
    }
    assert set(ERROR_CLASSES.values()) == classes | {OpsledgerError}
