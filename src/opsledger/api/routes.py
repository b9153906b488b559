"""The ``/api/v1`` routes: thin handlers over a ``LocalClient`` and its node.

Why the handlers look the way they do:

* A submitted transaction is read as **raw bytes** and handed to the node unchanged, so
  what the signer signed is what gets parsed and hashed (FastAPI's body parsing would
  re-serialise numbers). The body size is capped while reading, not after.
* Writes wait for the commit on the event loop (``asyncio.wrap_future``), not in a
  worker thread, so hundreds of concurrent writers share one group commit without
  exhausting the thread pool. The wait is ``shield``-ed: a timed-out or disconnected
  request must never cancel the node's future, which the committer still resolves.
* Handlers return ``JSONResponse`` directly; the ``response_model`` of each route only
  documents the shape (the fuzz test holds the API to it), so ledger data is never
  re-validated or re-encoded through pydantic on the way out.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from opsledger.api.errors import ERROR_RESPONSES, PayloadTooLarge, json_error_responses
from opsledger.client.local import MAX_PAGE, LocalClient
from opsledger.core import (
    InvalidInput,
    OpsledgerError,
    Receipt,
    SignedTransaction,
    StorageError,
    canonical,
    parse_json,
)
from opsledger.core.schemas import envelope_schema

if TYPE_CHECKING:
    from opsledger.api.app import ApiMetrics

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_ITEMS", "MAX_TX_BYTES", "build_router"]

MAX_TX_BYTES = 1 << 20
"""One signed transaction: 1 MiB, far above any real one (bodies are small evidence)."""
MAX_BATCH_ITEMS = 10_000
MAX_BATCH_BYTES = 32 << 20
MAX_INT = 2**63 - 1
"""Integer parameters stop here: the stores keep 64-bit integers."""
COMMIT_TIMEOUT = 30.0

_TX_ID = re.compile(r"^[0-9a-fA-F]{64}$")
_TX_ID_SCHEMA = {"pattern": _TX_ID.pattern}


# -- documented shapes ---------------------------------------------------------------


class ReceiptOut(BaseModel):
    tx_id: str
    height: int
    leaf_index: int


class InclusionProofOut(BaseModel):
    tx_id: str
    leaf_index: int
    tree_size: int
    leaf_hash: str
    hashes: list[str]
    checkpoint: str


class ConsistencyProofOut(BaseModel):
    first: int
    second: int
    hashes: list[str]
    first_checkpoint: str
    second_checkpoint: str


class TxOut(BaseModel):
    tx_id: str
    leaf_index: int
    height: int
    leaf: str
    transaction: dict[str, Any]


class TxWithProofOut(TxOut):
    proof: InclusionProofOut | None = None


class TxPageOut(BaseModel):
    items: list[TxOut]
    next: int | None


class BatchErrorOut(BaseModel):
    error: dict[str, Any]


class BatchOut(BaseModel):
    results: list[ReceiptOut | BatchErrorOut]


class BlockOut(BaseModel):
    height: int
    block_hash: str
    header: dict[str, Any]
    sig: str
    checkpoint: str


class HeadOut(BaseModel):
    height: int
    block_hash: str
    log_size: int
    log_root: str
    time: str
    origin: str
    genesis_hash: str


class ActorKeyOut(BaseModel):
    key_id: str
    active: bool
    retired: str | None


class ActorOut(BaseModel):
    actor: str
    roles: list[str]
    kind: str
    keys: list[ActorKeyOut]
    last_nonce: int


def _errors(*statuses: int, json_only: bool = False) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route: the ones named plus 422 (parameter
    validation), 500 and 503, which any route can answer. ``json_only`` for routes whose
    success response is not JSON."""
    wanted = sorted({*statuses, 422, 500, 503})
    if json_only:
        return json_error_responses(*wanted)
    return {status: ERROR_RESPONSES[status] for status in wanted}


def _signed_tx_schema() -> dict[str, Any]:
    schema = envelope_schema()
    schema["required"] = [*schema["required"], "sig"]
    return schema


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


# -- helpers ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is over {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_tx_id(tx_id: str) -> str:
    if not _TX_ID.match(tx_id):
        raise InvalidInput("a transaction id is 64 hex digits", field="tx_id")
    return tx_id.lower()


def _parse_batch(raw: bytes) -> list[SignedTransaction | OpsledgerError]:
    items = parse_json(raw)
    if not isinstance(items, list):
        raise InvalidInput("a batch is a JSON array of signed transactions", field="batch")
    if len(items) > MAX_BATCH_ITEMS:
        raise PayloadTooLarge(
            f"a batch holds at most {MAX_BATCH_ITEMS} transactions, got {len(items)}",
            limit=MAX_BATCH_ITEMS,
        )
    parsed: list[SignedTransaction | OpsledgerError] = []
    for item in items:
        try:
            parsed.append(SignedTransaction.from_dict(item))
        except OpsledgerError as exc:
            parsed.append(exc)
    return parsed


def _canonical_items(raw: bytes) -> list[bytes] | None:
    """The items of a batch that is exactly ``[`` leaf ``,`` leaf ... ``]`` with every leaf
    canonical (what ``HttpClient.submit_many`` sends), as their own bytes; else ``None``.

    Then each item goes to the node as bytes, which takes the canonical fast path and the
    node's pipeline (parse, verify in the worker, commit, overlapped) instead of the strict
    parser up front: the same acceptance argument as ``SignedTransaction.parse``, since
    bytes equal to the re-encoding are what the strict parser would read."""
    try:
        items = orjson.loads(raw)
        if not isinstance(items, list) or len(items) > MAX_BATCH_ITEMS:
            return None
        leaves = [canonical(item) if type(item) is dict else b"" for item in items]
    except (ValueError, TypeError, RecursionError, OpsledgerError):
        return None
    if not all(leaves) or b"[" + b",".join(leaves) + b"]" != raw:
        return None
    return leaves


def _submit_batch(client: LocalClient, raw: bytes) -> list[Receipt | OpsledgerError]:
    leaves = _canonical_items(raw)
    if leaves is not None:
        return client.node.submit_many(leaves)
    parsed = _parse_batch(raw)
    valid = [item for item in parsed if isinstance(item, SignedTransaction)]
    outcomes = iter(client.node.submit_many(valid) if valid else [])
    return [item if isinstance(item, OpsledgerError) else next(outcomes) for item in parsed]


def _page_cursor(items: Sequence[dict[str, Any]], limit: int) -> int | None:
    """Cursor pagination: a full page may have more after it; a short page is the end."""
    return int(items[-1]["leaf_index"]) if len(items) == limit and items else None


# -- the router ------------------------------------------------------------------------


def build_router(client: LocalClient, metrics: ApiMetrics) -> APIRouter:
    """Routes bound to one client (closures, not globals: two apps never share state)."""
    node = client.node
    router = APIRouter(prefix="/api/v1")

    @router.post(
        "/transactions",
        summary="Submit one signed transaction",
        description="The body is a signed transaction exactly as its signer serialised it."
        " Answers once the transaction's block is durable.",
        status_code=201,
        response_model=ReceiptOut,
        responses=_errors(400, 403, 409, 413),
        openapi_extra=_json_body(_signed_tx_schema(), "A signed transaction"),
        tags=["transactions"],
    )
    async def submit_transaction(request: Request) -> JSONResponse:
        raw = await read_body(request, MAX_TX_BYTES)
        started = time.perf_counter()
        try:
            future = await run_in_threadpool(node.submit_async, raw)
            receipt: Receipt = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), COMMIT_TIMEOUT
            )
        except OpsledgerError as exc:
            metrics.refused.labels(exc.code).inc()
            raise
        except TimeoutError as exc:
            metrics.refused.labels(StorageError.code).inc()
            raise StorageError(
                f"the commit did not finish within {COMMIT_TIMEOUT:g} s; the transaction was"
                " not acknowledged (it may still be committed: look it up before re-signing)"
            ) from exc
        finally:
            metrics.submit_seconds.labels("single").observe(time.perf_counter() - started)
        metrics.accepted.inc()
        return JSONResponse(receipt.to_dict(), status_code=201)

    @router.post(
        "/transactions/batch",
        summary="Submit many signed transactions",
        description="A JSON array of signed transactions (at most 10,000). Each gets its"
        " receipt or its own error, in order; one bad item does not refuse the others.",
        response_model=BatchOut,
        responses=_errors(400, 413),
        openapi_extra=_json_body(
            {"type": "array", "maxItems": MAX_BATCH_ITEMS, "items": _signed_tx_schema()},
            "Signed transactions",
        ),
        tags=["transactions"],
    )
    async def submit_batch(request: Request) -> JSONResponse:
        raw = await read_body(request, MAX_BATCH_BYTES)
        started = time.perf_counter()
        try:
            outcomes = await run_in_threadpool(_submit_batch, client, raw)
        finally:
            metrics.submit_seconds.labels("batch").observe(time.perf_counter() - started)
        results: list[dict[str, Any]] = []
        for outcome in outcomes:
            if isinstance(outcome, OpsledgerError):
                metrics.refused.labels(outcome.code).inc()
                results.append({"error": outcome.to_dict()})
            else:
                metrics.accepted.inc()
                results.append(outcome.to_dict())
        return JSONResponse({"results": results})

    @router.get(
        "/transactions",
        summary="List transactions",
        description="Filters combine with AND. Pages by cursor: pass ``next`` as ``after``.",
        response_model=TxPageOut,
        responses=_errors(400),
        tags=["transactions"],
    )
    def list_transactions(
        *,
        tx_type: str | None = Query(
            None, alias="type", max_length=256, description="exact, or a prefix.*"
        ),
        actor: str | None = Query(None, max_length=256),
        subject: str | None = Query(None, max_length=512, description="KIND or KIND:ID"),
        since: str | None = Query(None, max_length=64, description="RFC 3339, inclusive"),
        until: str | None = Query(None, max_length=64, description="RFC 3339, exclusive"),
        after: int | None = Query(None, ge=0, le=MAX_INT, description="leaf-index cursor"),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
        order: Literal["asc", "desc"] = Query("asc"),
    ) -> JSONResponse:
        filters = {
            "type": tx_type,
            "actor": actor,
            "subject": subject,
            "since": since,
            "until": until,
            "after": after,
            "limit": limit,
            "order": order,
        }
        items = client.list_transactions(filters)
        return JSONResponse({"items": items, "next": _page_cursor(items, limit)})

    @router.get(
        "/transactions/{tx_id}",
        summary="Get a transaction with its inclusion proof",
        description="The proof is against the current checkpoint (``proof=false`` skips it).",
        response_model=TxWithProofOut,
        responses=_errors(400, 404),
        tags=["transactions"],
    )
    def get_transaction(
        tx_id: str = Path(max_length=128, json_schema_extra=_TX_ID_SCHEMA),
        proof: bool = Query(True),
    ) -> JSONResponse:
        return JSONResponse(client.get_transaction(check_tx_id(tx_id), proof=proof))

    @router.get(
        "/blocks/{height}",
        summary="Get a block",
        response_model=BlockOut,
        responses=_errors(404),
        tags=["ledger"],
    )
    def get_block(height: int = Path(ge=0, le=MAX_INT)) -> JSONResponse:
        return JSONResponse(client.get_block(height))

    @router.get(
        "/head",
        summary="The newest block: height, log size and root",
        response_model=HeadOut,
        responses=_errors(),
        tags=["ledger"],
    )
    def get_head() -> JSONResponse:
        return JSONResponse(client.head())

    @router.get(
        "/checkpoint",
        summary="A signed checkpoint (C2SP signed note), exactly as signed",
        response_class=PlainTextResponse,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "The signed note",
            },
            **_errors(404, json_only=True),
        },
        tags=["ledger"],
    )
    def get_checkpoint(
        size: int | None = Query(None, ge=0, le=MAX_INT, description="tree size; default head"),
    ) -> PlainTextResponse:
        return PlainTextResponse(client.checkpoint(size))

    @router.get(
        "/proofs/inclusion/{tx_id}",
        summary="Inclusion proof of a transaction",
        response_model=InclusionProofOut,
        responses=_errors(400, 404),
        tags=["proofs"],
    )
    def get_inclusion_proof(
        tx_id: str = Path(max_length=128, json_schema_extra=_TX_ID_SCHEMA),
        size: int | None = Query(None, ge=0, le=MAX_INT, description="tree size; default head"),
    ) -> JSONResponse:
        return JSONResponse(client.inclusion_proof(check_tx_id(tx_id), size))

    @router.get(
        "/proofs/consistency",
        summary="Consistency proof between two tree sizes",
        response_model=ConsistencyProofOut,
        responses=_errors(400, 404),
        tags=["proofs"],
    )
    def get_consistency_proof(
        first: int = Query(ge=0, le=MAX_INT),
        second: int = Query(ge=0, le=MAX_INT),
    ) -> JSONResponse:
        return JSONResponse(client.consistency_proof(first, second))

    @router.get(
        "/actors/{name}",
        summary="An actor: roles, keys and last nonce",
        response_model=ActorOut,
        responses=_errors(404),
        tags=["identity"],
    )
    def get_actor(name: str = Path(max_length=256)) -> JSONResponse:
        return JSONResponse(client.actor(name))

    return router
