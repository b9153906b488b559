"""The HTTP ``LedgerClient``: the same calls as ``LocalClient``, over the ``/api/v1`` API.

Errors are translated exactly once, in ``_request``: a transport failure (connect, read,
timeout, protocol) becomes ``UpstreamError`` (a URL httpx cannot use, ``ConfigError``);
an API error body becomes the ``OpsledgerError`` subclass its ``code`` names, with the
same message and details, so a caller handles ``NotFound`` or ``ReplayRejected`` the same
whether the ledger is in process or across the network. Anything that is not our error
shape (a proxy's HTML page, a truncated body) is an ``UpstreamError`` naming the status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from opsledger.client.base import TxFilter
from opsledger.core import (
    AlreadyRecorded,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OpsledgerError,
    PermissionDenied,
    ProofError,
    Receipt,
    ReplayRejected,
    SchemaError,
    SignedTransaction,
    StorageError,
    UnknownType,
    UpstreamError,
    VerificationFailed,
)

__all__ = ["ERROR_CLASSES", "HttpClient", "error_from_body"]

ERROR_CLASSES: dict[str, type[OpsledgerError]] = {
    cls.code: cls
    for cls in (
        OpsledgerError,
        InvalidInput,
        SchemaError,
        UnknownType,
        NotFound,
        PermissionDenied,
        VerificationFailed,
        ProofError,
        Conflict,
        ReplayRejected,
        AlreadyRecorded,
        UpstreamError,
        StorageError,
        ConfigError,
    )
}
"""Every code of ``core.errors`` back to its class."""

_BY_STATUS: dict[int, type[OpsledgerError]] = {
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    502: UpstreamError,
    503: StorageError,
}
"""For codes this client does not know (a newer server): the closest class by status."""

MAX_BATCH = 10_000
"""The server's batch limit; longer ``submit_many`` calls are sent in chunks."""


def error_from_body(status: int, body: Any) -> OpsledgerError | None:
    """The error an API error body describes, or None if it is not our shape."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if not isinstance(error, Mapping):
        return None
    code = error.get("code")
    message = error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        cls = _BY_STATUS.get(status, InvalidInput if 400 <= status < 500 else UpstreamError)
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    result = cls(message, **details)
    if cls.code != code:
        result.details.setdefault("code", code)
    return result


def _receipt(item: Any) -> Receipt:
    try:
        return Receipt(str(item["tx_id"]), int(item["height"]), int(item["leaf_index"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"the server answered with a malformed receipt: {item!r:.200}") from exc


def _batch_result(item: Any) -> Receipt | OpsledgerError:
    if isinstance(item, Mapping) and "error" in item:
        error = error_from_body(400, item)
        if error is None:
            raise UpstreamError(f"the server answered with a malformed error: {item!r:.200}")
        return error
    return _receipt(item)


class HttpClient:
    """A ``LedgerClient`` talking to ``opsledger serve`` at ``base_url``.

    ``transport`` replaces the network (tests use ``httpx.MockTransport``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            headers={"accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"HttpClient({self.base_url!r})"

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one place foreign exceptions are translated --
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = self._http.request(
                method, path, params=params, content=content, headers=headers
            )
            response.read()
        except httpx.InvalidURL as exc:
            raise ConfigError(f"bad ledger URL {self.base_url!r}: {exc}", key="url") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"{method} {self.base_url}{path} failed: {type(exc).__name__}: {exc}",
                url=f"{self.base_url}{path}",
            ) from exc
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        error = error_from_body(response.status_code, body)
        if error is None:
            raise UpstreamError(
                f"{method} {self.base_url}{path} answered HTTP {response.status_code}"
                " without an opsledger error body",
                status=response.status_code,
            )
        raise error

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(
                f"{method} {self.base_url}{path} answered with a body that is not JSON",
                status=response.status_code,
            ) from exc

    # -- LedgerClient --
    def submit(self, stx: SignedTransaction) -> Receipt:
        """Send the canonical signed bytes, exactly what was signed."""
        return _receipt(self._json("POST", "/api/v1/transactions", content=stx.leaf))

    def submit_many(self, stxs: Sequence[SignedTransaction]) -> list[Receipt | OpsledgerError]:
        results: list[Receipt | OpsledgerError] = []
        for start in range(0, len(stxs), MAX_BATCH):
            chunk = stxs[start : start + MAX_BATCH]
            body = b"[" + b",".join(stx.leaf for stx in chunk) + b"]"
            answer = self._json("POST", "/api/v1/transactions/batch", content=body)
            items = answer.get("results") if isinstance(answer, Mapping) else None
            if not isinstance(items, list) or len(items) != len(chunk):
                raise UpstreamError("the batch answer does not hold one result per transaction")
            results.extend(_batch_result(item) for item in items)
        return results

    def get_transaction(self, tx_id: str, *, proof: bool = False) -> dict[str, Any]:
        params = {"proof": "true" if proof else "false"}
        view: dict[str, Any] = self._json(
            "GET", f"/api/v1/transactions/{_seg(tx_id)}", params=params
        )
        if not proof:
            view.pop("proof", None)
        return view

    def list_transactions(self, filters: TxFilter) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None and v != ""}
        page = self._json("GET", "/api/v1/transactions", params=params)
        items: list[dict[str, Any]] = page["items"]
        return items

    def list_page(self, filters: TxFilter) -> tuple[list[dict[str, Any]], int | None]:
        """One page and the cursor of the next (None at the end)."""
        params = {k: v for k, v in filters.items() if v is not None and v != ""}
        page = self._json("GET", "/api/v1/transactions", params=params)
        return page["items"], page["next"]

    def get_block(self, height: int) -> dict[str, Any]:
        block: dict[str, Any] = self._json("GET", f"/api/v1/blocks/{int(height)}")
        return block

    def head(self) -> dict[str, Any]:
        head: dict[str, Any] = self._json("GET", "/api/v1/head")
        return head

    def checkpoint(self, size: int | None = None) -> str:
        params = {"size": size} if size is not None else None
        return self._request("GET", "/api/v1/checkpoint", params=params).text

    def inclusion_proof(self, tx_id: str, size: int | None = None) -> dict[str, Any]:
        params = {"size": size} if size is not None else None
        proof: dict[str, Any] = self._json(
            "GET", f"/api/v1/proofs/inclusion/{_seg(tx_id)}", params=params
        )
        return proof

    def consistency_proof(self, first: int, second: int) -> dict[str, Any]:
        proof: dict[str, Any] = self._json(
            "GET", "/api/v1/proofs/consistency", params={"first": first, "second": second}
        )
        return proof

    def actor(self, name: str) -> dict[str, Any]:
        actor: dict[str, Any] = self._json("GET", f"/api/v1/actors/{_seg(name)}")
        return actor

    def close(self) -> None:
        self._http.close()


def _seg(value: str) -> str:
    """One path segment, escaped so a ``/`` or ``?`` in a name cannot change the route."""
    return quote(value, safe="")
