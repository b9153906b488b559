"""``init`` and ``keys``: homes, key files, and identity changes as transactions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from opsledger.app import load_key
from opsledger.cli import keys as keys_cli
from opsledger.client.base import submit_signed
from opsledger.core import StorageError

from .conftest import fails, ok, ok_json, run


def test_init_prints_home_ledger_id_and_admin(tmp_path: Path) -> None:
    result = ok(tmp_path / "h", "init", "--admin", "alice", "--node", "n1")
    assert "alice" in result.stdout
    info = ok_json(tmp_path / "h", "head")
    assert info["genesis_hash"] in result.stdout
    assert "release-gate@1, sla@1" in result.stdout
    deployed = [
        json.loads(line)["transaction"]["body"]["name"]
        for line in ok(
            tmp_path / "h", "log", "--type", "contract.deployed", "--json"
        ).stdout.splitlines()
    ]
    assert deployed == ["release-gate", "sla"]


def test_init_json_shape(tmp_path: Path) -> None:
    info = ok_json(tmp_path / "h", "init", "--admin", "alice")
    assert {"home", "genesis_hash", "admin", "node", "contracts"} <= set(info)
    assert info["admin"] == "alice"
    assert len(info["genesis_hash"]) == 64
    key_file = tmp_path / "h" / "keys" / "alice.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_init_refuses_an_existing_home(home: Path) -> None:
    assert "already holds a ledger" in fails(home, "init")


def test_commands_on_a_missing_home_say_init(tmp_path: Path) -> None:
    assert "opsledger init" in fails(tmp_path / "nothing", "log")


def test_global_home_from_environment(tmp_path: Path) -> None:
    ok(None, "init", env={"OPSLEDGER_HOME": str(tmp_path / "envhome")})
    assert (tmp_path / "envhome" / "opsledger.yaml").exists()


def test_keys_new_writes_a_private_key_file_and_records_it(home: Path) -> None:
    info = ok_json(home, "keys", "new", "ci", "--role", "ci", "--kind", "service")
    assert set(info) >= {"actor", "key_id", "roles", "kind", "tx_id", "height", "leaf_index"}
    key_file = home / "keys" / "ci.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_key(key_file).key_id == info["key_id"]
    seed = key_file.read_text().strip()
    tx = ok_json(home, "show", info["tx_id"])
    assert tx["transaction"]["type"] == "identity.key_added"
    assert tx["transaction"]["subject"] == {"kind": "actor", "id": "ci"}
    assert tx["transaction"]["body"]["roles"] == ["ci"]
    assert tx["transaction"]["body"]["kind"] == "service"
    # The private key appears nowhere in output or on the ledger.
    listing = ok(home, "keys", "list").stdout + ok(home, "log", "--json").stdout
    assert seed not in listing


def test_keys_new_with_several_roles(home: Path) -> None:
    info = ok_json(home, "keys", "new", "bob", "--role", "developer", "--role", "operator")
    assert info["roles"] == ["developer", "operator"]


def test_keys_new_refused_leaves_no_key_file(home: Path) -> None:
    assert "unknown role" in fails(home, "keys", "new", "eve", "--role", "wizard")
    assert not (home / "keys" / "eve.key").exists()
    # Bad name: refused by the schema before any file is written.
    assert fails(home, "keys", "new", "Bad/Name", "--role", "ci")
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["admin.key", "node.key"]


def test_keys_new_twice_is_refused(home: Path) -> None:
    ok(home, "keys", "new", "ci", "--role", "ci")
    assert "already exists" in fails(home, "keys", "new", "ci", "--role", "ci")


def test_keys_list(home: Path) -> None:
    ok(home, "keys", "new", "dev", "--role", "developer")
    lines = ok(home, "keys", "list", "--json").stdout.splitlines()
    actors = {a["actor"]: a for a in map(json.loads, lines)}
    assert set(actors) == {"admin", "node", "dev"}
    assert actors["dev"]["roles"] == ["developer"]
    assert actors["dev"]["keys"][0]["active"] is True
    table = ok(home, "keys", "list").stdout
    assert "dev" in table and "developer" in table and "active" in table


def test_key_file_must_be_private(home: Path) -> None:
    ok(home, "keys", "new", "dev", "--role", "developer")
    key_file = home / "keys" / "dev.key"
    os.chmod(key_file, 0o644)
    message = fails(home, "record", "note", "--subject", "x:y", "--field", "text=hi", "--as", "dev")
    assert "0644" in message and "0600" in message


def test_keys_rotate_retires_the_old_key(home: Path) -> None:
    ok(home, "keys", "new", "dev", "--role", "developer")
    old_seed = (home / "keys" / "dev.key").read_text().strip()
    info = ok_json(home, "keys", "rotate", "dev")
    assert info["old_key_id"] != info["key_id"]
    assert load_key(home / "keys" / "dev.key").key_id == info["key_id"]
    assert not [p for p in (home / "keys").iterdir() if p.name.startswith(".")]
    # The new key signs; the old one is refused.
    ok(home, "record", "note", "--subject", "x:y", "--field", "text=new", "--as", "dev")
    message = fails(
        home,
        "record",
        "note",
        "--subject",
        "x:y",
        "--field",
        "text=old",
        env={"OPSLEDGER_KEY": old_seed, "OPSLEDGER_ACTOR": "dev"},
    )
    assert "rotated" in message
    dev = next(
        a
        for a in map(json.loads, ok(home, "keys", "list", "--json").stdout.splitlines())
        if a["actor"] == "dev"
    )
    assert {k["key_id"]: k["retired"] for k in dev["keys"]} == {
        info["old_key_id"]: "rotated",
        info["key_id"]: None,
    }
    assert "rotated" in ok(home, "keys", "list").stdout


def test_keys_rotate_refused_keeps_the_old_key(home: Path) -> None:
    before = (home / "keys" / "admin.key").read_text()
    assert "unknown actor" in fails(home, "keys", "rotate", "ghost")
    assert (home / "keys" / "admin.key").read_text() == before
    assert not [p for p in (home / "keys").iterdir() if p.name.startswith(".")]


def test_keys_rotate_not_acknowledged_keeps_the_new_key(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation whose commit is not acknowledged may still be recorded; deleting the
    new key then would leave the actor with no key that signs."""
    ok(home, "keys", "new", "dev", "--role", "developer")
    before = (home / "keys" / "dev.key").read_text()
    real_submit = submit_signed

    def submitted_but_not_acknowledged(client: Any, signer: Any, stx: Any) -> Any:
        real_submit(client, signer, stx)  # recorded...
        raise StorageError("not acknowledged within 30 s")  # ...but the answer was lost

    monkeypatch.setattr(keys_cli, "submit_signed", submitted_but_not_acknowledged)
    message = fails(home, "keys", "rotate", "dev", code=1)
    assert "the new key is kept in" in message
    (staged,) = [p for p in (home / "keys").iterdir() if p.name.startswith(".dev")]
    assert str(staged) in message
    assert (home / "keys" / "dev.key").read_text() == before
    new_key_id = message.split("(key id ")[1].split(")")[0]
    lines = ok(home, "keys", "list", "--json").stdout.splitlines()
    (dev,) = [a for a in map(json.loads, lines) if a["actor"] == "dev"]
    active = [k["key_id"] for k in dev["keys"] if k["active"]]
    assert active == [new_key_id]  # the ledger has it: the kept file is the way back

    # A retry must not replace the kept key (it is the only one the ledger accepts now).
    monkeypatch.undo()
    retry = run(home, "keys", "rotate", "dev")
    assert retry.exit_code != 0
    assert "an earlier rotation of dev may be recorded" in retry.stderr
    assert new_key_id in retry.stderr
    assert staged.exists()
    staged.replace(home / "keys" / "dev.key")  # what the message says to do
    ok(home, "record", "note", "--subject", "ticket:1", "--field", "text=hi", "--as", "dev")


def test_keys_revoke(home: Path) -> None:
    ok(home, "keys", "new", "dev", "--role", "developer")
    info = ok_json(home, "keys", "revoke", "dev", "--reason", "laptop lost")
    tx = ok_json(home, "show", info["tx_id"])["transaction"]
    assert tx["type"] == "identity.key_revoked"
    assert tx["body"] == {"actor": "dev", "key_id": info["key_id"], "reason": "laptop lost"}
    message = fails(home, "record", "note", "--subject", "x:y", "--field", "text=hi", "--as", "dev")
    assert "revoked" in message
    assert "has no active key" in fails(home, "keys", "revoke", "dev", "--key-id", info["key_id"])


def test_keys_revoke_refuses_the_node_key(home: Path) -> None:
    assert "rotate" in fails(home, "keys", "revoke", "node")


def test_rotating_the_node_key_keeps_the_ledger_writable(home: Path) -> None:
    ok(home, "keys", "rotate", "node")
    ok(home, "record", "note", "--subject", "x:y", "--field", "text=after")
    assert ok_json(home, "verify")["ok"] is True


def test_keys_as_another_admin(home: Path) -> None:
    ok(home, "keys", "new", "root2", "--role", "admin")
    info = ok_json(home, "keys", "new", "ops", "--role", "operator", "--as", "root2")
    assert ok_json(home, "show", info["tx_id"])["transaction"]["actor"] == "root2"
    assert "may not write" in fails(home, "keys", "new", "x1", "--role", "ci", "--as", "ops")
    assert run(home, "keys", "list").exit_code == 0


def test_actor_names_cannot_escape_the_keys_directory(home: Path, tmp_path: Path) -> None:
    for command in (
        ["new", "../../evil", "--role", "ci"],
        ["rotate", "../evil"],
        ["revoke", "a/b"],
    ):
        assert "actor name" in fails(home, "keys", *command)
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["admin.key", "node.key"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
