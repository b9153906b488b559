"""Docs that cannot drift: the reference pages are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from opsledger.core import open_checkpoint, parse_vkey
from opsledger.core.merkle import leaf_hash, root_of
from opsledger.core.schemas import BODY_SCHEMAS

ROOT = Path(__file__).resolve().parent.parent
LEDGER_DOC = (ROOT / "docs" / "ledger.md").read_text()


def test_worked_checkpoint_example_verifies() -> None:
    block = LEDGER_DOC.split("<!-- worked-example:begin -->")[1].split(
        "<!-- worked-example:end -->"
    )[0]
    note = block.strip().removeprefix("```").removesuffix("```").strip("\n") + "\n"
    vkey = re.search(r"verifier\s+key `([^`]+)`", LEDGER_DOC)
    assert vkey is not None
    name, key = parse_vkey(vkey.group(1))
    checkpoint = open_checkpoint(note, {name: key})
    leaves = [b'{"example":1}', b'{"example":2}', b'{"example":3}']
    assert checkpoint.size == 3
    assert checkpoint.root == root_of([leaf_hash(leaf) for leaf in leaves])
    assert key.b64 in LEDGER_DOC


def test_every_transaction_type_is_documented() -> None:
    import subprocess
    import sys

    doc = (ROOT / "docs" / "transactions.md").read_text()
    for tx_type in BODY_SCHEMAS:
        assert f"## `{tx_type}`" in doc, f"{tx_type} has no entry in docs/transactions.md"
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_transactions_doc.py"), "--check"], check=False
    )
    assert check.returncode == 0, (
        "docs/transactions.md is stale: run scripts/gen_transactions_doc.py"
    )


def test_cli_reference_is_current() -> None:
    import subprocess
    import sys

    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_cli_doc.py"), "--check"], check=False
    )
    assert check.returncode == 0, "docs/cli.md is stale: run scripts/gen_cli_doc.py"


def test_every_api_route_is_documented_and_nothing_else() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from opsledger.api import create_app

    document = create_app(cast(Any, SimpleNamespace(node=SimpleNamespace()))).openapi()
    api_doc = (ROOT / "docs" / "api.md").read_text()
    served = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    documented = set(re.findall(r"^\| `([A-Z]+)` \| `([^`]+)` \|", api_doc, re.MULTILINE))
    assert served == documented


def test_every_builtin_contract_is_documented() -> None:
    from opsledger.contracts.builtin import BUILTIN

    doc = (ROOT / "docs" / "contracts.md").read_text()
    for name in BUILTIN:
        assert f"## {name}" in doc, f"built-in contract {name} has no section in docs/contracts.md"


def test_every_config_key_is_documented() -> None:
    from opsledger.app import access, config, deploys, services, webhooks
    from opsledger.pipeline import queue

    doc = (ROOT / "docs" / "configuration.md").read_text()
    keys = (
        [f"ledger.{k}" for k in config._LEDGER_KEYS]
        + [f"api.{k}" for k in config._API_KEYS]
        + [f"contracts.jobs.{k}" for k in services._JOB_KEYS]
        + [f"access.{k}" for k in access._SECTION_KEYS]
        + [f"access.environments.<env>.{k}" for k in access._ENVIRONMENT_KEYS]
        + [f"webhooks.github.{k}" for k in webhooks._GITHUB_KEYS]
        + [f"notify.targets[].{k}" for k in ("kind", "url", "headers", "name")]
        + [f"jobs.{k}" for k in sorted(queue._SETTINGS_KEYS | {"actor"})]
        + [f"deploy.{k}" for k in sorted(deploys._SECTION_KEYS - {"environments"})]
        + ["deploy.environments.<env>.protected"]
    )
    missing = [
        key
        for key in keys
        if f"| `{key}` |" not in doc
        and not (key == "access.environments" and "| `access.environments.<env>" in doc)
    ]
    assert not missing, f"undocumented config keys: {missing}"
