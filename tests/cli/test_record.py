"""``record``: bodies from JSON, files, stdin and fields; signing identities; errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opsledger.cli.record import build_body, parse_field
from opsledger.core import InvalidInput

from .conftest import DIGEST, fails, ok, ok_json, run


def _tx(home: Path, tx_id: str) -> dict[str, Any]:
    tx: dict[str, Any] = ok_json(home, "show", tx_id)["transaction"]
    return tx


def test_record_json_is_exactly_the_receipt(home: Path) -> None:
    receipt = ok_json(
        home, "record", "note", "--subject", "ticket:OPS-1", "--body", '{"text": "hello"}'
    )
    assert set(receipt) == {"tx_id", "height", "leaf_index"}
    assert receipt["height"] == 1 and receipt["leaf_index"] == 2
    tx = _tx(home, receipt["tx_id"])
    assert tx["actor"] == "admin"
    assert tx["subject"] == {"kind": "ticket", "id": "OPS-1"}
    assert tx["body"] == {"text": "hello"}


def test_record_friendly_line(home: Path) -> None:
    out = ok(home, "record", "note", "--subject", "x:y", "--field", "text=hi").stdout
    assert out.startswith("recorded note ") and "height 1" in out


def test_fields_build_typed_nested_bodies(home: Path) -> None:
    receipt = ok_json(
        home,
        "record",
        "scan.finished",
        "--subject",
        f"artifact:{DIGEST}",
        "--field",
        f"digest={DIGEST}",
        "--field",
        "scanner=trivy",
        "--field",
        "findings.critical=0",
        "--field",
        "findings.high=2",
        "--field",
        "findings.medium=0",
        "--field",
        "findings.low=7",
    )
    body = _tx(home, receipt["tx_id"])["body"]
    assert body == {
        "digest": DIGEST,
        "scanner": "trivy",
        "findings": {"critical": 0, "high": 2, "medium": 0, "low": 7},
    }


def test_parse_field_values() -> None:
    body: dict[str, Any] = {}
    for item in [
        "n=3",
        "t=true",
        "s=hello world",
        'o={"a": [1]}',
        'q="3"',
        "a.b.c=x",
        "e=",
        "u=NaN",
    ]:
        parse_field(item, body)
    assert body == {
        "n": 3,
        "t": True,
        "s": "hello world",
        "o": {"a": [1]},
        "q": "3",
        "a": {"b": {"c": "x"}},
        "e": "",
        "u": "NaN",
    }
    with pytest.raises(InvalidInput):
        parse_field("novalue", {})
    with pytest.raises(InvalidInput):
        parse_field("a..b=1", {})
    with pytest.raises(InvalidInput, match="already a value"):
        parse_field("n.x=1", {"n": 3})


def test_build_body_merges_fields_over_a_body() -> None:
    assert build_body('{"a": 1, "b": {"c": 2}}', None, ["b.d=3"]) == {"a": 1, "b": {"c": 2, "d": 3}}
    with pytest.raises(InvalidInput, match="not both"):
        build_body("{}", "f.json", [])
    with pytest.raises(InvalidInput, match="JSON object"):
        build_body("[1]", None, [])


def test_body_file_and_stdin(home: Path, tmp_path: Path) -> None:
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps({"id": "INC-7", "severity": "SEV2", "title": "db down"}))
    receipt = ok_json(
        home,
        "record",
        "incident.opened",
        "--subject",
        "incident:INC-7",
        "--body-file",
        str(body_file),
    )
    assert _tx(home, receipt["tx_id"])["body"]["severity"] == "SEV2"
    receipt = ok_json(
        home,
        "record",
        "note",
        "--subject",
        "x:y",
        "--body-file",
        "-",
        input='{"text": "from stdin"}',
    )
    assert _tx(home, receipt["tx_id"])["body"] == {"text": "from stdin"}
    assert "cannot read --body-file" in fails(
        home, "record", "note", "--subject", "x:y", "--body-file", str(tmp_path / "missing.json")
    )


def test_refs(home: Path) -> None:
    first = ok_json(home, "record", "note", "--subject", "x:y", "--field", "text=a")
    second = ok_json(
        home, "record", "note", "--subject", "x:y", "--field", "text=b", "--ref", first["tx_id"]
    )
    assert _tx(home, second["tx_id"])["refs"] == [first["tx_id"]]


def test_record_as_another_actor_and_from_the_environment(home: Path) -> None:
    ok(home, "keys", "new", "ci", "--role", "ci", "--kind", "service")
    build = [
        "build.finished",
        "--subject",
        f"artifact:{DIGEST}",
        "--field",
        "artifact=app",
        "--field",
        f"digest={DIGEST}",
        "--field",
        "commit=9f1c",
        "--field",
        "status=success",
    ]
    receipt = ok_json(home, "record", *build, "--as", "ci")
    assert _tx(home, receipt["tx_id"])["actor"] == "ci"
    seed = (home / "keys" / "ci.key").read_text().strip()
    receipt = ok_json(home, "record", *build, env={"OPSLEDGER_KEY": seed, "OPSLEDGER_ACTOR": "ci"})
    assert _tx(home, receipt["tx_id"])["actor"] == "ci"
    receipt = ok_json(
        home,
        "record",
        *build,
        env={"OPSLEDGER_KEY_FILE": str(home / "keys" / "ci.key"), "OPSLEDGER_ACTOR": "ci"},
    )
    assert _tx(home, receipt["tx_id"])["actor"] == "ci"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nope.type", "--subject", "x:y", "--body", "{}"], "unknown transaction type"),
        (["note", "--subject", "no-colon", "--field", "text=x"], "KIND:ID"),
        (["note", "--subject", "x:y", "--body", "{oops"], "not valid JSON"),
        (["note", "--subject", "x:y", "--body", "[]"], "JSON object"),
        (["note", "--subject", "x:y", "--field", "text=x", "--as", "ghost"], "ghost"),
        (["note", "--subject", "x:y"], "text"),
        (["build.finished", "--subject", "x:y", "--field", "artifact=a"], "build.finished"),
        (["note", "--subject", "x:y", "--field", "text=x", "--ref", "abc"], "refs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(home: Path, args: list[str], expected: str) -> None:
    assert expected in fails(home, "record", *args)
    assert ok_json(home, "head")["height"] == 0  # nothing was written


def test_role_not_allowed(home: Path) -> None:
    ok(home, "keys", "new", "dev", "--role", "developer")
    message = fails(
        home,
        "record",
        "build.finished",
        "--subject",
        f"artifact:{DIGEST}",
        "--field",
        "artifact=app",
        "--field",
        f"digest={DIGEST}",
        "--field",
        "commit=9f1c",
        "--field",
        "status=success",
        "--as",
        "dev",
    )
    assert "may not write" in message


def test_unknown_actor_with_an_environment_key(home: Path) -> None:
    seed = (home / "keys" / "admin.key").read_text().strip()
    message = fails(
        home,
        "record",
        "note",
        "--subject",
        "x:y",
        "--field",
        "text=x",
        env={"OPSLEDGER_KEY": seed, "OPSLEDGER_ACTOR": "ghost"},
    )
    assert "unknown actor 'ghost'" in message


def test_verbose_adds_details(home: Path) -> None:
    result = run(home, "--verbose", "record", "note", "--subject", "x:y", "--body", "{}")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ")
    assert any("field:" in line for line in lines[1:])


def test_replay_is_resigned_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nonce collision with another process is refused as a replay; record re-signs."""
    from opsledger.client.base import Signer

    first = ok_json(home, "record", "note", "--subject", "x:y", "--field", "text=a")
    last: int = _tx(home, first["tx_id"])["nonce"]
    original = Signer.next_nonce
    calls = {"n": 0}

    def stale(self: Signer) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # as if another process had just used a later nonce
            return last
        return original(self)

    monkeypatch.setattr(Signer, "next_nonce", stale)
    receipt = ok_json(home, "record", "note", "--subject", "x:y", "--field", "text=b")
    assert _tx(home, receipt["tx_id"])["nonce"] > last


def test_field_values_follow_the_body_schema() -> None:
    from opsledger.cli.record import build_body
    from opsledger.core.schemas import BODY_SCHEMAS

    body = build_body(
        None,
        None,
        ["commit=1234", "status=success", "passed=3", "extra=5"],
        BODY_SCHEMAS["build.finished"],
    )
    assert body == {"commit": "1234", "status": "success", "passed": 3, "extra": 5}
    scan = build_body(None, None, ["findings.critical=0"], BODY_SCHEMAS["scan.finished"])
    assert scan == {"findings": {"critical": 0}}
