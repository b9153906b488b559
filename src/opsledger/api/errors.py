"""One JSON error shape for every error the API answers, and the status each maps to.

Every error body is ``{"error": {"code": ..., "message": ..., <details>}}``, built from
``OpsledgerError.to_dict()`` so the HTTP client can turn it back into the same class by
``code``. Callers decide what to do next from the status and code, never from the text:

    InvalidInput, SchemaError, UnknownType   400  fix the request; nothing changed
    (FastAPI parameter validation)           422  same shape, code ``invalid_input``
    PermissionDenied                         403
    NotFound                                 404
    Conflict, ReplayRejected                 409  re-sign with a fresh nonce, or give up
    AlreadyRecorded                          409  the result exists: use ``existing``
    PayloadTooLarge                          413
    VerificationFailed, ProofError           422  the evidence does not hold
    UpstreamError                            502
    StorageError                             503  not acknowledged: retry
    anything else                            500  generic message, details only in the log

Unexpected exceptions never leak a traceback or their text into the body: that text may
name paths or internals; the server log has it.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsledger.core import (
    Conflict,
    InvalidInput,
    NotFound,
    OpsledgerError,
    PermissionDenied,
    StorageError,
    UpstreamError,
    VerificationFailed,
)

__all__ = [
    "ERROR_RESPONSES",
    "ErrorBody",
    "ErrorResponse",
    "PayloadTooLarge",
    "error_response",
    "install_error_handlers",
    "json_error_responses",
    "status_for",
]

logger = logging.getLogger("opsledger.api")


class PayloadTooLarge(InvalidInput):
    """The request body is over the endpoint's limit (HTTP 413); nothing was read further."""

    code = "payload_too_large"


# Most specific first: the first class in the MRO walk that appears here wins.
_STATUS: dict[type, int] = {
    PayloadTooLarge: 413,
    PermissionDenied: 403,
    NotFound: 404,
    InvalidInput: 400,
    Conflict: 409,
    VerificationFailed: 422,
    UpstreamError: 502,
    StorageError: 503,
}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class ErrorBody(BaseModel):
    """``code`` is machine-readable; more keys (``field``, ``height`` ...) may follow."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("Invalid input (bad JSON, schema, unknown type, bad parameter)"),
    403: _doc("Permission denied (unknown actor, inactive key, role)"),
    404: _doc("Not found"),
    409: _doc("Conflict with ledger state (replayed or reordered nonce)"),
    413: _doc("Request body too large"),
    422: _doc("Request parameters failed validation, or evidence does not verify"),
    500: _doc("Internal error (no details in the body)"),
    502: _doc("An upstream peer failed"),
    503: _doc("The store failed; nothing was acknowledged"),
}
"""Documented on every route so clients and schemathesis know each error's shape."""


def json_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same entries for a route whose own responses are not JSON (``/checkpoint``):
    FastAPI would document a ``model`` under the route's media type, but errors are
    always JSON. The ``$ref`` resolves because the JSON routes register the model."""
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    return {
        status: {
            "description": ERROR_RESPONSES[status]["description"],
            "content": {"application/json": {"schema": ref}},
        }
        for status in statuses
    }


def status_for(exc: OpsledgerError) -> int:
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"error": body}, status_code=status)


def _internal() -> JSONResponse:
    return error_response(500, {"code": "internal_error", "message": "internal server error"})


async def _opsledger_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(OpsledgerError, exc)  # registered for this class only
    status = status_for(exc)
    if status == 500:
        # ConfigError or a bare OpsledgerError inside a request is our bug, not the
        # caller's: log it whole, answer generically.
        logger.error(
            "unhandled %s in %s %s", exc.code, request.method, request.url.path, exc_info=exc
        )
        return _internal()
    return error_response(status, exc.to_dict())


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    field = ".".join(loc) or None
    message = str(first.get("msg", "invalid request"))
    body: dict[str, Any] = {
        "code": InvalidInput.code,
        "message": f"{field}: {message}" if field else message,
    }
    if field:
        body["field"] = field
    return error_response(422, body)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, {"code": code, "message": str(exc.detail)})
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _internal()


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one shape. ``Exception`` is handled by Starlette's
    outermost middleware, which answers with our body and then re-raises for the server
    to log; nothing of the exception reaches the client."""
    app.add_exception_handler(OpsledgerError, _opsledger_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
