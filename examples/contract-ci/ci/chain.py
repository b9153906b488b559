"""Shared helpers for the contract-ci scripts: compile with the ``vyper`` package, start or
reach an anvil node, deploy with web3.py.

Every script in ``ci/`` works on its own (``python ci/gas_check.py``) as well as inside
``opsledger pipeline run``. When the compiled artifact (``build/<Name>.json``, what the
``compile`` job publishes) is missing or was built from other source bytes, the scripts
compile again instead of testing stale bytecode: the artifact records the SHA-256 of the
source it came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import vyper  # type: ignore[import-untyped]
from web3 import Web3
from web3.contract import Contract

PROJECT = Path(__file__).resolve().parent.parent
"""The example's root: ``contracts/``, ``build/``, ``tests/``, ``.gas-snapshot.json``."""

CONTRACTS = PROJECT / "contracts"
BUILD = PROJECT / "build"
DEFAULT_CONTRACT = "Token"
CONSTRUCTOR_ARGS: tuple[Any, ...] = ("Ledger Token", "LGT")


def die(message: str) -> NoReturn:
    """A setup or usage problem (no node, bad snapshot file): one line, exit status 2,
    so a pipeline tells it apart from a failed check (exit 1)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True)
class Artifact:
    """What the compile job publishes for one contract."""

    name: str
    source: str
    source_sha256: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str

    def to_json(self) -> dict[str, Any]:
        return {
            "contract": self.name,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "compiler": self.compiler,
            "abi": self.abi,
            "bytecode": self.bytecode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            name=data["contract"],
            source=data["source"],
            source_sha256=data["source_sha256"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            compiler=data["compiler"],
        )

    def state_changing(self) -> list[str]:
        """Names of the functions a transaction can call (what the gas snapshot covers)."""
        return sorted(
            entry["name"]
            for entry in self.abi
            if entry.get("type") == "function"
            and entry.get("stateMutability") in ("nonpayable", "payable")
        )


def source_path(name: str = DEFAULT_CONTRACT) -> Path:
    return CONTRACTS / f"{name}.vy"


def compile_contract(path: Path) -> Artifact:
    """Compile one ``.vy`` file with the vyper package (no solc, no external binary)."""
    text = path.read_text()
    out = vyper.compile_code(text, contract_path=path.name, output_formats=["abi", "bytecode"])
    return Artifact(
        name=path.stem,
        source=str(path.relative_to(PROJECT)) if path.is_relative_to(PROJECT) else str(path),
        source_sha256=hashlib.sha256(text.encode()).hexdigest(),
        abi=out["abi"],
        bytecode=out["bytecode"],
        compiler=f"vyper {vyper.__version__}",
    )


def write_artifact(artifact: Artifact, build: Path = BUILD) -> Path:
    build.mkdir(parents=True, exist_ok=True)
    target = build / f"{artifact.name}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(artifact.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(target)
    return target


def load_artifact(name: str = DEFAULT_CONTRACT, build: Path = BUILD) -> Artifact:
    """The published artifact when it matches the source on disk; a fresh compile if not."""
    path = source_path(name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    target = build / f"{name}.json"
    if target.exists():
        artifact = Artifact.from_json(json.loads(target.read_text()))
        if artifact.source_sha256 == digest:
            return artifact
    artifact = compile_contract(path)
    write_artifact(artifact, build)
    return artifact


@contextlib.contextmanager
def node(url: str | None = None, *, fork_url: str | None = None) -> Iterator[str]:
    """The JSON-RPC URL of a node: ``url`` as given, else a fresh anvil on 127.0.0.1
    (forking ``fork_url`` when set) that is stopped on exit."""
    if url:
        yield url
        return
    from opsledger.testing.anvil import Anvil

    extra = ["--fork-url", fork_url] if fork_url else []
    try:
        anvil = Anvil.start(extra_args=extra)
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        die(f"cannot start anvil: {exc}")
    try:
        yield anvil.url
    finally:
        anvil.stop()


def connect(url: str) -> Web3:
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    if not w3.is_connected():
        die(f"no JSON-RPC node answers at {url}")
    return w3


def deploy(w3: Web3, artifact: Artifact, *args: Any, sender: str | None = None) -> Contract:
    """Deploy ``artifact`` from ``sender`` (the node's first unlocked account by default)."""
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*(args or CONSTRUCTOR_ARGS)).transact(
        {"from": sender or w3.eth.accounts[0]}
    )
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1:
        die(f"deploying {artifact.name} reverted")
    address = receipt["contractAddress"]
    if address is None:
        die(f"deploying {artifact.name} created no contract")
    return w3.eth.contract(address=address, abi=artifact.abi)


def env_url(name: str) -> str | None:
    """An RPC URL from the environment (empty means unset), for CI runners with a node."""
    return os.environ.get(name) or None
