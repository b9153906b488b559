"""``opsledger keys``: actors' keys, whose every change is a ledger transaction.

The order of file writes and ledger writes is chosen so a failure never strands an
actor: ``new`` writes the key file, then records ``identity.key_added`` and removes the
file again if that is refused; ``rotate`` stages the new key in a hidden file, records
``identity.key_rotated``, and only then moves it over the old key file, so the key on
disk is always one the ledger accepts. Private keys are never printed.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from opsledger.app.keys import key_path, load_key
from opsledger.cli._render import print_json, print_json_lines, print_table, say
from opsledger.cli._state import State, get_state
from opsledger.client.base import LedgerClient, submit_signed
from opsledger.core import (
    Conflict,
    InvalidInput,
    OpsledgerError,
    PrivateKey,
    Receipt,
    StorageError,
    Subject,
    UpstreamError,
)

__all__ = ["keys_app", "list_actors", "register"]

keys_app = typer.Typer(
    help="Manage actors and their keys (each change is a transaction).", no_args_is_help=True
)


class Kind(StrEnum):
    person = "person"
    service = "service"
    node = "node"


AsOption = Annotated[
    str | None, typer.Option("--as", help="Sign as this admin (default: the home's admin).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


ACTOR_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
"""The transaction schema's actor name: also safe as a file name under keys/."""


def _checked(actor: str) -> str:
    """Refuse a bad name before it is used to build a key file path."""
    if not ACTOR_NAME.match(actor):
        raise InvalidInput(
            f"actor name {actor!r} must be 1-64 of a-z 0-9 . _ @ -, starting with a letter"
            " or digit",
            field="actor",
        )
    return actor


def _receipt_fields(receipt: Receipt) -> dict[str, Any]:
    return receipt.to_dict()


@keys_app.command("new")
def new(
    ctx: typer.Context,
    *,
    actor: Annotated[str, typer.Argument(help="The new actor's name.")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeatable).")],
    kind: Annotated[Kind, typer.Option("--kind", help="What the actor is.")] = Kind.person,
    as_actor: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key for ACTOR, save it under keys/ (mode 0600) and register it.

    Example: opsledger keys new ci --role ci --kind service
    """
    actor = _checked(actor)
    state = get_state(ctx)
    home = state.home
    path = key_path(home.keys_dir, actor)
    key, receipt = home.add_actor(actor, list(role), kind=kind.value, as_actor=as_actor)
    result = {
        "actor": actor,
        "key_id": key.key_id,
        "roles": list(role),
        "kind": kind.value,
        "key_file": str(path),
        **_receipt_fields(receipt),
    }
    if as_json:
        print_json(state.out, result)
        return
    say(
        state.out,
        f"added {actor} ({', '.join(role)}) with key {key.key_id}; "
        f"key file {path} (tx {receipt.tx_id[:12]}, height {receipt.height})",
    )


def list_actors(client: LedgerClient) -> list[dict[str, Any]]:
    """Every registered actor. The in-process client knows its registry; for any other
    client, names come from the ``identity.key_added`` transactions and each actor's
    state from ``client.actor``."""
    actors = getattr(client, "actors", None)
    if callable(actors):
        result: list[dict[str, Any]] = actors()
        return result
    names: set[str] = set()
    cursor: int | None = None
    while True:
        page = client.list_transactions(
            {"type": "identity.key_added", "after": cursor, "limit": 1000}
        )
        for view in page:
            names.add(str(view["transaction"]["body"]["actor"]))
        if len(page) < 1000:
            break
        cursor = int(page[-1]["leaf_index"])
    return [client.actor(name) for name in sorted(names)]


def _status(key: dict[str, Any]) -> str:
    if key.get("active"):
        return "active"
    return str(key.get("retired") or "retired")


@keys_app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List actors with their roles and keys (active, rotated or revoked).

    Example: opsledger keys list --json
    """
    state = get_state(ctx)
    with state.reader() as client:
        actors = list_actors(client)
    if as_json:
        print_json_lines(state.out, actors)
        return
    rows = [
        (a["actor"], a.get("kind", ""), ", ".join(a["roles"]), k["key_id"], _status(k))
        for a in actors
        for k in a["keys"]
    ]
    print_table(state.out, ["actor", "kind", "roles", "key id", "status"], rows)


def _current_key_id(state: State, client: LedgerClient, actor: str) -> str:
    """The key to retire: the one in the actor's key file, else its only active key."""
    path = key_path(state.home.keys_dir, actor)
    if path.exists():
        return state.home.load_key(actor).key_id
    info = client.actor(actor)
    active = [k["key_id"] for k in info["keys"] if k.get("active")]
    if len(active) != 1:
        raise InvalidInput(
            f"{actor!r} has {len(active)} active keys and no key file here: name one with --key-id",
            field="key_id",
        )
    return str(active[0])


def _key_id_of(path: Path) -> str:
    try:
        return load_key(path).key_id
    except OpsledgerError:
        return "unreadable"


@keys_app.command("rotate")
def rotate(
    ctx: typer.Context,
    *,
    actor: Annotated[str, typer.Argument(help="Whose key to replace.")],
    as_actor: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replace ACTOR's key: the old key signs nothing once the rotation is recorded.

    The new key file replaces the old one only after the ledger accepted the rotation.
    If the rotation is not acknowledged, the new key stays in keys/.ACTOR.pending.key
    (it may be recorded all the same) and the next rotation waits until it is dealt with.

    Example: opsledger keys rotate ci
    """
    actor = _checked(actor)
    state = get_state(ctx)
    home = state.home
    if actor == home.config().node and home.server_url():
        raise Conflict(
            "stop `opsledger serve` before rotating the node's key: it signs "
            "every block with the key it loaded"
        )
    signer = home.signer(as_actor)
    final = key_path(home.keys_dir, actor)
    staged = key_path(home.keys_dir, f".{actor}.pending")
    if staged.exists():
        raise Conflict(
            f"an earlier rotation of {actor} may be recorded: {staged} holds its new key"
            f" (key id {_key_id_of(staged)}); if `opsledger keys list` shows that key for"
            f" {actor}, move the file to {final}, otherwise delete it, then retry",
            key_file=str(staged),
        )
    new_key = PrivateKey.generate()
    home.write_key(f".{actor}.pending", new_key)
    submitting = False
    try:
        with state.writer() as client:
            old_key_id = _current_key_id(state, client, actor)
            body = {"actor": actor, "old_key_id": old_key_id, "public_key": new_key.public_key.b64}
            stx = signer.sign("identity.key_rotated", Subject("actor", actor), body)
            submitting = True
            receipt = submit_signed(client, signer, stx)
    except (StorageError, UpstreamError) as exc:
        if not submitting:
            staged.unlink(missing_ok=True)
            raise
        # Not acknowledged is not refused: the rotation may be recorded, and then only the
        # new key signs for the actor. Keep it, and say where.
        raise StorageError(
            f"{exc.message}; the rotation may still be recorded, so the new key is kept in "
            f"{staged} (key id {new_key.key_id}): if `opsledger keys list` shows that key "
            f"for {actor}, move the file to {final}",
            key_file=str(staged),
        ) from exc
    except OpsledgerError:
        staged.unlink(missing_ok=True)  # refused: the old key stays the only one
        raise
    except BaseException:
        if not submitting:  # interrupted while submitting: kept, the next run explains
            staged.unlink(missing_ok=True)
        raise
    os.replace(staged, final)
    result = {
        "actor": actor,
        "old_key_id": old_key_id,
        "key_id": new_key.key_id,
        "key_file": str(final),
        **_receipt_fields(receipt),
    }
    if as_json:
        print_json(state.out, result)
        return
    say(
        state.out,
        f"rotated {actor}: {old_key_id} -> {new_key.key_id}; key file {final} "
        f"(tx {receipt.tx_id[:12]}, height {receipt.height})",
    )


@keys_app.command("revoke")
def revoke(
    ctx: typer.Context,
    *,
    actor: Annotated[str, typer.Argument(help="Whose key to revoke.")],
    key_id: Annotated[
        str | None, typer.Option("--key-id", help="Which key (default: the one in keys/).")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")] = None,
    as_actor: AsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke one of ACTOR's keys: it signs nothing from now on.

    Example: opsledger keys revoke ci --reason "laptop stolen"
    """
    actor = _checked(actor)
    state = get_state(ctx)
    home = state.home
    if actor == home.config().node:
        raise InvalidInput(
            "revoking the node's key would stop this ledger from writing:"
            f" use `opsledger keys rotate {actor}`",
            field="actor",
        )
    signer = home.signer(as_actor)
    with state.writer() as client:
        chosen = key_id or _current_key_id(state, client, actor)
        body: dict[str, Any] = {"actor": actor, "key_id": chosen}
        if reason:
            body["reason"] = reason
        stx = signer.sign("identity.key_revoked", Subject("actor", actor), body)
        receipt = submit_signed(client, signer, stx)
    result = {"actor": actor, "key_id": chosen, "reason": reason, **_receipt_fields(receipt)}
    if as_json:
        print_json(state.out, result)
        return
    say(
        state.out,
        f"revoked key {chosen} of {actor} (tx {receipt.tx_id[:12]}, height {receipt.height})",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
