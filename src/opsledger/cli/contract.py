"""``opsledger contract``: deploy, list, show and dry-run contracts; list verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsledger.app.contracts import (
    deploy_contract,
    deployed_contracts,
    dry_run,
    find_contract,
    verdicts,
)
from opsledger.cli._render import kv_table, print_json, print_json_lines, print_raw, print_table
from opsledger.cli._state import get_state
from opsledger.core import InvalidInput

__all__ = ["contract_app", "register"]

contract_app = typer.Typer(
    help="Contracts: deterministic rules every node re-executes (release gates, SLAs).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="file") from exc


@contract_app.command("deploy")
def deploy(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The contract document (YAML).")],
    actor: Annotated[
        str | None, typer.Option("--as", help="Sign as this admin (default: the home's admin).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a contract (every CEL expression compiles) and deploy it (admins only).

    A deployed version never changes: deploy a higher version to change a contract.

    Example: opsledger contract deploy release-gate-v2.yaml
    """
    state = get_state(ctx)
    source = _read(file)
    signer = state.home.signer(actor)
    with state.writer() as client:
        contract, receipt = deploy_contract(client, signer, source)
    info = {
        "contract": contract.name,
        "version": contract.version,
        "digest": contract.digest,
        **receipt.to_dict(),
    }
    if as_json:
        print_json(state.out, info)
        return
    state.out.print(f"deployed {contract.ref} ({contract.digest}) as {receipt.tx_id}")


@contract_app.command("list")
def list_contracts(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every deployment, oldest first.

    Example: opsledger contract list --json
    """
    state = get_state(ctx)
    with state.reader() as client:
        found = deployed_contracts(client)
    rows = [{k: d[k] for k in ("name", "version", "digest", "tx_id", "ts", "actor")} for d in found]
    if as_json:
        print_json_lines(state.out, rows)
        return
    print_table(
        state.out,
        ["name", "version", "digest", "deployed", "by", "tx id"],
        [
            (r["name"], r["version"], r["digest"], r["ts"], r["actor"], r["tx_id"][:12])
            for r in rows
        ],
    )


@contract_app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="Contract and version.")],
    as_json: JsonOption = False,
) -> None:
    """Show a deployed contract: its metadata and its source, byte for byte.

    Example: opsledger contract show release-gate@1
    """
    state = get_state(ctx)
    with state.reader() as client:
        found = find_contract(client, ref)
    if as_json:
        print_json(state.out, found)
        return
    state.out.print(
        kv_table([(k, found[k]) for k in ("name", "version", "digest", "tx_id", "ts", "actor")])
    )
    print_raw(state.out, "\n" + found["source"])


@contract_app.command("test")
def dry_run_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A draft contract document (YAML).")],
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", help="The ledger home to test against (default: --home)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Dry-run a draft against an existing ledger: what it would decide for each past
    trigger. Changes nothing.

    Example: opsledger contract test gate-v2.yaml --ledger ./.opsledger
    """
    state = get_state(ctx)
    decisions = dry_run(ledger or state.home_path, _read(file))
    if as_json:
        print_json_lines(state.out, decisions)
        return
    rows = []
    for d in decisions:
        verdict = d["verdict"]
        failing = (
            []
            if verdict is None
            else [
                f"{r['name']}: {r['reason']}"
                for r in verdict["requirements"]
                if r["result"] == "fail"
            ]
        )
        rows.append(
            (
                d["leaf_index"],
                d["type"],
                d["subject"],
                "n/a" if verdict is None else verdict["result"],
                "; ".join(failing),
            )
        )
    print_table(
        state.out,
        ["leaf", "trigger", "subject", "would decide", "why not"],
        rows,
        caption=f"{len(decisions)} past trigger(s); nothing was written",
    )


@contract_app.command("verdicts")
def list_verdicts(
    ctx: typer.Context,
    subject: Annotated[
        str | None, typer.Option("--subject", help="KIND:ID, e.g. artifact:sha256:...")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recorded verdicts, newest first, with each requirement's result and reason.

    Example: opsledger contract verdicts --subject artifact:sha256:ab12...
    """
    state = get_state(ctx)
    with state.reader() as client:
        found = verdicts(client, {"subject": subject, "limit": limit})
    if as_json:
        print_json_lines(state.out, found)
        return
    rows = []
    for v in found:
        reasons = "; ".join(
            f"{r['name']} {r['result']}" + (f": {r['reason']}" if r["reason"] else "")
            for r in v["requirements"]
        )
        rows.append(
            (v["ts"], f"{v['contract']}@{v['version']}", v["subject"], v["result"], reasons)
        )
    print_table(state.out, ["time", "contract", "subject", "result", "requirements"], rows)


def register(app: typer.Typer) -> None:
    app.add_typer(contract_app, name="contract")
