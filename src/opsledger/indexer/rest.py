"""REST over the index: ``GET /api/v1/tables`` and ``GET /api/v1/tables/{table}``.

A page of a table is ``GET /api/v1/tables/nft_transfer?to=0xab..&after=CURSOR&limit=50
&order=desc``. Every query parameter other than ``after``, ``limit`` and ``order`` is a
filter: ``column=value`` for equality, ``column__gte=value`` (``gt``, ``gte``, ``lt``,
``lte``) for ranges on integer columns. The store (``storage.Store.query``) validates
column names, values, limits and cursors and raises ``InvalidInput``/``NotFound``, which
``api.py`` turns into the one JSON error shape, so this module only translates.

The response is ``{"table", "rows", "next"}``; ``next`` is the cursor of the following
page (``null`` on the last). ABI integers (``uint``/``sint`` columns: uint256 balances,
token ids) are rendered as decimal strings because JSON readers in JavaScript round
numbers above 2^53; block numbers and log indexes stay numbers.

Tables that exist when the app starts get their own documented route (so the OpenAPI
document lists each table's filters and schemathesis fuzzes them); the generic
``{table}`` route answers for tables created later and for unknown names (404).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from opsledger.core import InvalidInput
from opsledger.indexer.schema import Column, TableSpec
from opsledger.indexer.storage import Store

__all__ = ["PAGE_PARAMS", "query_page", "render_row", "rest_router", "split_query", "table_info"]

PAGE_PARAMS = frozenset({"after", "limit", "order"})
DEFAULT_LIMIT = 100
_RANGES = ("gt", "gte", "lt", "lte")
_NUMBER = r"^(0|[1-9][0-9]{0,77})$"
_HEX = r"^0x[0-9a-fA-F]*$"


def query_page(
    store: Store,
    table: str,
    filters: Mapping[str, Any],
    *,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> tuple[list[dict[str, Any]], str | None]:
    """``Store.query``, with SQLite's ``OverflowError`` (a filter or cursor value beyond a
    64-bit column, which only a hostile or broken client sends) as ``InvalidInput``."""
    try:
        return store.query(table, filters, after, limit, order)
    except OverflowError as exc:
        raise InvalidInput(f"a filter or cursor value is out of range: {exc}") from exc


def render_value(col: Column, value: Any) -> Any:
    """One stored value as JSON: exact big integers become decimal strings."""
    if value is not None and col.kind in ("uint", "sint"):
        return str(value)
    return value


def render_row(spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    return {c.name: render_value(c, row.get(c.name)) for c in spec.columns}


def table_info(spec: TableSpec) -> dict[str, Any]:
    """A table as the API describes it (also what ``GET /api/v1/tables`` lists)."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "contract": spec.contract,
        "event": spec.event,
        "signature": spec.signature,
        "columns": [
            {"name": c.name, "kind": c.kind, "abi_type": c.abi_type, "indexed": c.indexed}
            for c in spec.columns
        ],
        "primary_key": list(spec.primary_key),
        "cursor": list(spec.cursor),
    }


def split_query(
    params: Mapping[str, str] | Any,
) -> tuple[dict[str, str], str | None, int, Literal["asc", "desc"]]:
    """Query parameters as (filters, after, limit, order); raises ``InvalidInput``.

    A parameter given twice is refused rather than silently narrowed to one value.
    """
    items: list[tuple[str, str]] = (
        list(params.multi_items()) if hasattr(params, "multi_items") else list(params.items())
    )
    seen: set[str] = set()
    for key, _ in items:
        if key in seen:
            raise InvalidInput(f"query parameter {key!r} given more than once", field=key)
        seen.add(key)
    values = dict(items)
    limit_text = values.pop("limit", None)
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            raise InvalidInput("limit must be an integer", field="limit") from None
    order = values.pop("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidInput("order must be asc or desc", field="order")
    after = values.pop("after", None) or None
    return values, after, limit, "asc" if order == "asc" else "desc"


def _filter_schema(col: Column) -> dict[str, Any]:
    if col.kind == "int":
        return {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    if col.kind in ("uint", "sint"):
        return {"type": "string", "pattern": _NUMBER}
    if col.kind == "bool":
        return {"type": "boolean"}
    if col.kind in ("address", "bytes"):
        return {"type": "string", "pattern": _HEX}
    return {"type": "string"}


def _parameters(spec: TableSpec) -> list[dict[str, Any]]:
    """OpenAPI query parameters of one table's route: its filters and the page controls."""
    params: list[dict[str, Any]] = [
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "The `next` cursor of the previous page.",
            "schema": {"type": "string"},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": DEFAULT_LIMIT},
        },
        {
            "name": "order",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
        },
    ]
    for col in spec.columns:
        if col.kind == "json":
            continue
        schema = _filter_schema(col)
        params.append(
            {
                "name": col.name,
                "in": "query",
                "required": False,
                "description": f"Rows whose `{col.name}` ({col.abi_type or col.kind}) equals this.",
                "schema": schema,
            }
        )
        if col.kind == "int":
            for op in _RANGES:
                params.append(
                    {
                        "name": f"{col.name}__{op}",
                        "in": "query",
                        "required": False,
                        "schema": schema,
                    }
                )
    return params


_PAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["table", "rows", "next"],
    "properties": {
        "table": {"type": "string"},
        "rows": {"type": "array", "items": {"type": "object"}},
        "next": {"type": ["string", "null"]},
    },
}


def rest_router(store: Store, error_responses: Mapping[int | str, dict[str, Any]]) -> APIRouter:
    """The ``/api/v1`` routes over ``store``; ``error_responses`` documents the error body."""
    router = APIRouter(prefix="/api/v1", tags=["index"])
    errors = dict(error_responses)

    def page(table: str, request: Request) -> dict[str, Any]:
        spec = store.spec(table)
        filters, after, limit, order = split_query(request.query_params)
        rows, next_cursor = query_page(
            store, spec.name, filters, after=after, limit=limit, order=order
        )
        return {
            "table": spec.name,
            "rows": [render_row(spec, r) for r in rows],
            "next": next_cursor,
        }

    @router.get("/tables", summary="The tables of the index and their columns")
    async def list_tables() -> dict[str, Any]:
        specs = await run_in_threadpool(store.list_tables)
        return {"tables": [table_info(s) for s in specs]}

    def _route(spec: TableSpec) -> Callable[[Request], Any]:
        async def one_table(request: Request) -> dict[str, Any]:
            return await run_in_threadpool(page, spec.name, request)

        one_table.__name__ = f"query_{spec.name}"
        return one_table

    for spec in store.list_tables():
        router.add_api_route(
            f"/tables/{spec.name}",
            _route(spec),
            methods=["GET"],
            summary=f"Rows of {spec.name}",
            responses={
                200: {"content": {"application/json": {"schema": _PAGE_SCHEMA}}},
                **{k: v for k, v in errors.items() if k in (400, 422, 503)},
            },
            openapi_extra={"parameters": _parameters(spec)},
        )

    @router.get(
        "/tables/{table}",
        summary="Rows of any table (filters: column=value, column__gte=N ...)",
        responses={k: v for k, v in errors.items() if k in (400, 404, 422, 503)},
    )
    async def any_table(table: str, request: Request) -> dict[str, Any]:
        return await run_in_threadpool(page, table, request)

    return router
