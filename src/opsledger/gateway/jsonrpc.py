"""JSON-RPC 2.0 framing: parsing, request validation, error objects, and which node
errors mean "this node is behind or broken" (retry elsewhere) rather than "your request
is wrong" (answer it). Small and strict enough to write here; checked by hypothesis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LIMIT_EXCEEDED",
    "METHOD_NOT_FOUND",
    "NO_UPSTREAM",
    "PARSE_ERROR",
    "Request",
    "RpcErrorReply",
    "error_response",
    "parse_payload",
    "retriable",
    "validate",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NO_UPSTREAM = -32050
LIMIT_EXCEEDED = -32005

# Node-side errors meaning "this node is behind or broken", not "your request is wrong".
_RETRIABLE_MESSAGE = re.compile(
    r"header not found|unknown block|block not found|missing trie node|blockoutofrange|"
    r"not synced|syncing|internal error|too many requests|rate limit|capacity|timeout|"
    r"timed out|busy|unavailable|request limit|try again",
    re.IGNORECASE,
)
_RETRIABLE_CODES = {-32603, -32005, -32001, -32002, 429}


class RpcErrorReply(Exception):
    """A JSON-RPC error to send to the client (not a transport failure)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            self.error["data"] = data


def error_response(request_id: Any, code: int, message: str) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )


def parse_payload(body: bytes) -> Any:
    """The decoded JSON body, or ``RpcErrorReply`` with the parse error."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RpcErrorReply(PARSE_ERROR, "Parse error: the body is not valid JSON") from None


@dataclass(slots=True)
class Request:
    id: Any
    method: str
    params: list[Any]
    notification: bool


def validate(item: Any) -> Request:
    if not isinstance(item, dict):
        raise RpcErrorReply(INVALID_REQUEST, "Invalid request: not a JSON-RPC object")
    if item.get("jsonrpc") != "2.0":
        raise RpcErrorReply(INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"')
    method = item.get("method")
    if not isinstance(method, str) or not method:
        raise RpcErrorReply(INVALID_REQUEST, 'Invalid request: "method" must be a string')
    params = item.get("params", [])
    if isinstance(params, dict):
        raise RpcErrorReply(INVALID_PARAMS, "by-name params are not supported by eth_ methods")
    if not isinstance(params, list):
        raise RpcErrorReply(INVALID_REQUEST, 'Invalid request: "params" must be an array')
    request_id = item.get("id")
    if request_id is not None and not isinstance(request_id, (str, int, float)):
        raise RpcErrorReply(INVALID_REQUEST, 'Invalid request: "id" must be a string or number')
    if isinstance(request_id, bool):
        raise RpcErrorReply(INVALID_REQUEST, 'Invalid request: "id" must be a string or number')
    return Request(request_id, method, params, "id" not in item)


def retriable(error: dict[str, Any]) -> bool:
    code = error.get("code")
    message = str(error.get("message", ""))
    if _RETRIABLE_MESSAGE.search(message):
        return True
    return (
        code in _RETRIABLE_CODES
        and "revert" not in message.lower()
        and "nonce" not in message.lower()
    )
