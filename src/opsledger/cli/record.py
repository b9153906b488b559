"""``opsledger record``: sign one piece of evidence and append it to the ledger.

The body comes from ``--body JSON``, ``--body-file F`` (``-`` for stdin) or ``--field
k=v`` pairs, which are applied on top of either. A field's value is JSON when it parses
as JSON (``3``, ``true``, ``{"a": 1}``) and a string otherwise, so shell scripts need no
quoting for the common cases; dotted keys (``findings.critical=0``) build nested objects.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from opsledger.cli._render import print_json, say
from opsledger.cli._state import get_state
from opsledger.client.base import submit_signed
from opsledger.core import InvalidInput, parse_json, parse_subject
from opsledger.core.schemas import BODY_SCHEMAS

__all__ = ["build_body", "parse_field", "register"]


def _wants_string(schema: dict[str, Any] | None, parts: list[str]) -> bool:
    """True when the body schema says the field at ``parts`` is a string, so that
    ``--field commit=1234`` stays the string "1234" instead of becoming a number."""
    node: Any = schema
    for part in parts:
        if not isinstance(node, dict):
            return False
        node = node.get("properties", {}).get(part)
    if not isinstance(node, dict):
        return False
    enum = node.get("enum")
    return node.get("type") == "string" or (
        isinstance(enum, list) and all(isinstance(v, str) for v in enum)
    )


def parse_field(text: str, body: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Apply one ``key.path=value`` to ``body`` in place. The value is JSON if it parses
    (numbers, booleans, objects), else a string, and always a string where the type's
    body schema wants one."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidInput(f"--field must look like KEY=VALUE, got {text!r}", field="field")
    parts = key.split(".")
    if any(not part for part in parts):
        raise InvalidInput(f"--field key {key!r} has an empty part", field="field")
    value: Any = raw
    if not _wants_string(schema, parts):
        try:
            value = parse_json(raw)
        except InvalidInput:
            value = raw
    target = body
    for depth, part in enumerate(parts[:-1]):
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise InvalidInput(
                f"--field {key}: {where} is already a value, not an object", field="field"
            )
        target = child
    target[parts[-1]] = value


def _read_body_file(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read --body-file {name}: {exc.strerror}", field="body-file"
        ) from exc


def build_body(
    body: str | None,
    body_file: str | None,
    fields: list[str],
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if body is not None and body_file is not None:
        raise InvalidInput("give --body or --body-file, not both", field="body")
    result: dict[str, Any] = {}
    source = body if body is not None else _read_body_file(body_file) if body_file else None
    if source is not None:
        try:
            parsed = parse_json(source)
        except InvalidInput as exc:
            raise InvalidInput(f"body: {exc.message}", field="body") from exc
        if not isinstance(parsed, dict):
            raise InvalidInput("body must be a JSON object", field="body")
        result = parsed
    for item in fields:
        parse_field(item, result, schema)
    return result


def record(
    ctx: typer.Context,
    *,
    tx_type: Annotated[str, typer.Argument(metavar="TYPE", help="Transaction type.")],
    subject: Annotated[str, typer.Option("--subject", help="What it is about: KIND:ID.")],
    body: Annotated[str | None, typer.Option("--body", help="The body as a JSON object.")] = None,
    body_file: Annotated[
        str | None, typer.Option("--body-file", help="Read the body from a file (- is stdin).")
    ] = None,
    field: Annotated[
        list[str] | None, typer.Option("--field", help="KEY=VALUE body field (repeatable).")
    ] = None,
    ref: Annotated[
        list[str] | None, typer.Option("--ref", help="Id of a related transaction (repeatable).")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--as", help="Sign as this actor (default: the admin).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON.")] = False,
) -> None:
    """Sign a transaction and append it; prints its id, block height and leaf index.

    Returns once the block holding it is durable.

    Example: opsledger record build.finished --subject artifact:sha256:ab12... --field
    artifact=app --field digest=sha256:ab12... --field commit=9f1c --field status=success
    --as ci
    """
    state = get_state(ctx)
    parsed_subject = parse_subject(subject)
    tx_body = build_body(body, body_file, field or [], BODY_SCHEMAS.get(tx_type))
    signer = state.home.signer(actor)
    # Signing validates the schema: bad input fails before the ledger is even opened.
    stx = signer.sign(tx_type, parsed_subject, tx_body, ref or ())
    with state.writer() as client:
        receipt = submit_signed(client, signer, stx)
    if as_json:
        print_json(state.out, receipt.to_dict())
        return
    say(
        state.out,
        f"recorded {tx_type} {receipt.tx_id} at height {receipt.height}, leaf {receipt.leaf_index}",
    )


def register(app: typer.Typer) -> None:
    app.command("record")(record)
