"""Regenerate docs/transactions.md from the schemas (``--check`` fails if it drifted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opsledger.core.identity import DEFAULT_ROLES
from opsledger.core.schemas import BODY_SCHEMAS
from opsledger.testing.factories import sample_bodies

DOC = Path(__file__).resolve().parent.parent / "docs" / "transactions.md"


def writers(tx_type: str) -> str:
    if tx_type == "note":
        return "every registered actor"
    roles = [
        role
        for role, patterns in DEFAULT_ROLES.items()
        if role != "admin"
        and any(p == tx_type or (p.endswith(".*") and tx_type.startswith(p[:-1])) for p in patterns)
    ]
    return ", ".join(["admin", *roles])


def render() -> str:
    out = [
        "# Transaction types",
        "",
        "Generated from `src/opsledger/core/schemas.py` by `scripts/gen_transactions_doc.py`;",
        "a test fails when this page and the schemas disagree. Required body fields are listed;",
        "bodies may carry more. Digests are `sha256:<64 hex>`. Writers are the default roles.",
        "",
    ]
    for tx_type in sorted(BODY_SCHEMAS):
        schema = BODY_SCHEMAS[tx_type]
        required = ", ".join(f"`{f}`" for f in schema["required"])
        optional = sorted(set(schema["properties"]) - set(schema["required"]))
        out += [f"## `{tx_type}`", "", f"- required: {required}"]
        if optional:
            out.append("- optional: " + ", ".join(f"`{f}`" for f in optional))
        out += [
            f"- written by: {writers(tx_type)}",
            "",
            "```json",
            json.dumps(sample_bodies()[tx_type], sort_keys=True),
            "```",
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.read_text() == text else 1)
    DOC.write_text(text)
