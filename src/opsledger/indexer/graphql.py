"""GraphQL over the index (strawberry), with types generated from the table specs.

The tables come from ABIs at run time, so the schema is built when the app starts: for
each table ``t`` a row type, a filter input and a page type, and one root field::

    nft_transfer(filter: NftTransferFilter, after: String, limit: Int = 100,
                 order: Order = asc): NftTransferPage!      # {rows: [...], next: String}

Field names are the column names as they are (snake_case; auto camel-casing is off) so
that REST, GraphQL and SQL name a column the same way. Filters are equality per column
plus ``<col>_gt/_gte/_lt/_lte`` on integer columns, the same as REST's ``col__gte``.
ABI integers (``uint``/``sint``) use the ``BigInt`` scalar, serialised as a decimal
string: GraphQL's ``Int`` is 32-bit. Store errors (bad cursor, bad value) become GraphQL
errors with the store's message; the query never reaches SQL with an unchecked name.

Building types with ``type(...)`` plus ``strawberry.type`` is strawberry's supported way
to make dynamic schemas; the only hand-written part is mapping our column kinds to
GraphQL types.
"""

from __future__ import annotations

import enum
import functools
import inspect
import keyword
from collections.abc import Sequence
from typing import Any, NewType

import strawberry
from starlette.concurrency import run_in_threadpool
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter
from strawberry.schema.config import StrawberryConfig

from opsledger.indexer.rest import query_page
from opsledger.indexer.schema import Column, TableSpec
from opsledger.indexer.storage import Store

__all__ = ["BigInt", "build_schema", "graphql_router"]

BigInt = NewType("BigInt", str)
JSONText = NewType("JSONText", str)

SCALARS: dict[object, Any] = {
    BigInt: strawberry.scalar(
        name="BigInt",
        serialize=str,
        parse_value=lambda v: str(int(str(v), 0)),
        description="An exact integer of any size (uint256), as a decimal string.",
    ),
    JSONText: strawberry.scalar(
        name="JSONText",
        serialize=str,
        parse_value=str,
        description="Arrays and tuples of an event argument, as JSON text.",
    ),
}


@strawberry.enum
class Order(enum.Enum):
    asc = "asc"
    desc = "desc"


@strawberry.type
class ColumnInfo:
    name: str
    kind: str
    abi_type: str
    indexed: bool


@strawberry.type
class TableInfo:
    name: str
    kind: str
    contract: str
    event: str
    signature: str
    columns: list[ColumnInfo]


_RANGES = ("gt", "gte", "lt", "lte")


def _python_type(col: Column) -> Any:
    return {
        "int": int,
        "uint": BigInt,
        "sint": BigInt,
        "address": str,
        "bytes": str,
        "bool": bool,
        "text": str,
        "json": JSONText,
    }[col.kind]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _attr(name: str) -> str:
    """The Python attribute for a GraphQL field: ``from`` is a column but a keyword."""
    return f"{name}_" if keyword.iskeyword(name) else name


def _row_type(spec: TableSpec) -> Any:
    annotations = {_attr(c.name): _python_type(c) | None for c in spec.columns}
    fields = {_attr(c.name): strawberry.field(name=c.name) for c in spec.columns}
    cls = type(_camel(spec.name) + "Row", (), {"__annotations__": annotations, **fields})
    return strawberry.type(cls, description=f"One row of {spec.name}.")


def _filter_type(spec: TableSpec) -> Any:
    annotations: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for col in spec.columns:
        if col.kind == "json":
            continue
        annotations[_attr(col.name)] = _python_type(col) | None
        defaults[_attr(col.name)] = strawberry.field(name=col.name, default=None)
        if col.kind == "int":
            for op in _RANGES:
                annotations[f"{col.name}_{op}"] = int | None
                defaults[f"{col.name}_{op}"] = None
    cls = type(_camel(spec.name) + "Filter", (), {"__annotations__": annotations, **defaults})
    return strawberry.input(cls, description=f"Filters on {spec.name} (all must hold).")


def _page_type(spec: TableSpec, row: Any) -> Any:
    cls = type(
        _camel(spec.name) + "Page",
        (),
        {"__annotations__": {"rows": list[row], "next": str | None}},
    )
    return strawberry.type(cls, description="A page of rows and the cursor of the next one.")


def _store_filters(spec: TableSpec, given: Any) -> dict[str, Any]:
    """The GraphQL filter input as the store's ``{column or column__op: value}``."""
    if given is None:
        return {}
    names = {c.name for c in spec.columns}
    filters: dict[str, Any] = {}
    for attr, value in vars(given).items():
        if value is None:
            continue
        key = attr[:-1] if attr.endswith("_") and keyword.iskeyword(attr[:-1]) else attr
        base, _, op = key.rpartition("_")
        if key not in names and base in names and op in _RANGES:
            filters[f"{base}__{op}"] = value
        else:
            filters[key] = value
    return filters


def _resolver(
    store: Store, spec: TableSpec, row_type: Any, page_type: Any, filter_type: Any
) -> Any:
    columns = [c.name for c in spec.columns]

    async def resolve(
        filter: Any = None,  # the GraphQL argument's public name
        after: str | None = None,
        limit: int = 100,
        order: Order = Order.asc,
    ) -> Any:
        rows, next_cursor = await run_in_threadpool(
            functools.partial(
                query_page,
                store,
                spec.name,
                _store_filters(spec, filter),
                after=after,
                limit=limit,
                order=order.value,
            )
        )
        return page_type(
            rows=[row_type(**{_attr(c): r.get(c) for c in columns}) for r in rows],
            next=next_cursor,
        )

    # strawberry reads the argument types from the signature: give it the generated ones.
    resolve.__annotations__ = {
        "filter": filter_type | None,
        "after": str | None,
        "limit": int,
        "order": Order,
        "return": page_type,
    }
    resolve.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "filter",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=filter_type | None,
            ),
            inspect.Parameter(
                "after", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None
            ),
            inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=100, annotation=int),
            inspect.Parameter(
                "order", inspect.Parameter.KEYWORD_ONLY, default=Order.asc, annotation=Order
            ),
        ],
        return_annotation=page_type,
    )
    return strawberry.field(resolver=resolve, description=f"Rows of {spec.name}.")


MAX_DEPTH = 6
MAX_ALIASES = 16
MAX_TOKENS = 2000


def build_schema(store: Store, specs: Sequence[TableSpec] | None = None) -> strawberry.Schema:
    """A schema with one root field per table of ``store`` (as of now) plus ``tables``."""
    tables = list(store.list_tables() if specs is None else specs)

    async def list_tables() -> list[TableInfo]:
        current = await run_in_threadpool(store.list_tables)
        return [
            TableInfo(
                name=s.name,
                kind=s.kind,
                contract=s.contract,
                event=s.event,
                signature=s.signature,
                columns=[
                    ColumnInfo(name=c.name, kind=c.kind, abi_type=c.abi_type, indexed=c.indexed)
                    for c in s.columns
                ],
            )
            for s in current
        ]

    fields: dict[str, Any] = {
        "tables": strawberry.field(resolver=list_tables, description="The tables.")
    }
    annotations: dict[str, Any] = {}
    for spec in tables:
        row = _row_type(spec)
        page = _page_type(spec, row)
        fields[spec.name] = _resolver(store, spec, row, page, _filter_type(spec))
    query = strawberry.type(type("Query", (), {"__annotations__": annotations, **fields}))
    return strawberry.Schema(
        query=query,
        config=StrawberryConfig(auto_camel_case=False, scalar_map=SCALARS),
        # one request must not be able to ask for unbounded work: a flat query over
        # tables needs little depth, few aliases and a short text
        extensions=[
            lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
            lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
            lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        ],
    )


def graphql_router(store: Store) -> GraphQLRouter[Any, Any]:
    """The ``/graphql`` endpoint (GraphiQL on GET from a browser) over ``store``."""
    return GraphQLRouter(build_schema(store))
