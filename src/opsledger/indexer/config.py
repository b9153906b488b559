"""The ``indexer`` section (of ``opsledger.yaml`` or of a ``--config`` file), validated.

Every error names the file, the key path (``indexer.chains[0].contracts[1].abi``) and the
reason; unknown keys are refused so a typo never falls back to a default silently.
Relative paths (a SQLite database, ABI files) are relative to the config file's folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsledger.core import ConfigError
from opsledger.indexer.abi import ContractEvents, load_abi

__all__ = [
    "ChainConfig",
    "ContractConfig",
    "FactoryConfig",
    "IndexerConfig",
    "load_file",
    "parse",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TOP = {"database", "chains", "poll_interval", "metrics"}
_CHAIN = {
    "name",
    "rpc",
    "finality_depth",
    "contracts",
    "initial_range",
    "max_range",
    "concurrency",
    "batch_size",
    "timeout",
}
_CONTRACT = {"name", "address", "abi", "start_block", "events", "factory"}
_FACTORY = {"contract", "event", "arg"}


@dataclass(frozen=True, slots=True)
class FactoryConfig:
    contract: str  # the name of the factory contract in the same chain
    event: str  # its event announcing a child ("PairCreated")
    arg: str  # the event argument (column name) holding the child address


@dataclass(frozen=True, slots=True)
class ContractConfig:
    name: str
    abi_name: str  # "erc721" or the ABI path as written
    events: ContractEvents
    address: str | None = None  # lower-case; None for factory children
    start_block: int = 0
    factory: FactoryConfig | None = None

    @property
    def preset(self) -> str:
        return self.abi_name.lower()


@dataclass(frozen=True, slots=True)
class ChainConfig:
    name: str
    rpc: str
    finality_depth: int
    contracts: tuple[ContractConfig, ...]
    initial_range: int = 2000
    max_range: int = 100_000
    concurrency: int = 4
    batch_size: int = 50  # JSON-RPC calls per HTTP batch (block headers)
    timeout: float = 20.0

    @property
    def start_block(self) -> int:
        # Factory children start where they are created, so they do not lower the start.
        fixed = [c.start_block for c in self.contracts if c.factory is None]
        return min(fixed, default=0)


@dataclass(frozen=True, slots=True)
class IndexerConfig:
    database: str
    chains: tuple[ChainConfig, ...]
    poll_interval: float = 1.0
    metrics: str | None = None  # "127.0.0.1:9464": serve Prometheus metrics there
    digest: str = ""
    source: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict)


def load_file(path: Path) -> IndexerConfig:
    """A ``--config`` file: its ``indexer`` section, or the file itself if it has none."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    section = loaded.get("indexer", loaded)
    return parse(section, path)


def _fail(path: Path | str, key: str, reason: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {reason}", key=key)


def _mapping(value: Any, allowed: set[str], path: Path | str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, key, "must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(
            path, f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})"
        )
    return value


def _int(value: Any, path: Path | str, key: str, low: int, high: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, key, f"must be an integer in {low}..{high}")
    return value


def _number(value: Any, path: Path | str, key: str, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise _fail(path, key, f"must be a number >= {low}")
    return float(value)


def parse(section: Any, path: Path) -> IndexerConfig:
    data = _mapping(section, _TOP, path, "indexer")
    base = path.parent
    if "database" not in data:
        raise _fail(path, "indexer.database", 'missing (e.g. "sqlite:///index.db")')
    database = str(data["database"])
    if database.startswith("sqlite:///") and database != "sqlite:///:memory:":
        file = Path(database[len("sqlite:///") :]).expanduser()
        if not file.is_absolute():
            database = f"sqlite:///{(base / file).resolve()}"
    elif not database.startswith(("postgresql://", "postgres://")):
        raise _fail(path, "indexer.database", "use sqlite:///file.db or postgresql://...")
    chains_raw = data.get("chains")
    if not isinstance(chains_raw, list) or not chains_raw:
        raise _fail(path, "indexer.chains", "must be a non-empty list")
    chains = tuple(
        _chain(raw, path, base, f"indexer.chains[{i}]") for i, raw in enumerate(chains_raw)
    )
    names = [c.name for c in chains]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise _fail(path, f"indexer.chains[{i}].name", f"{name!r} is used twice")
    metrics = data.get("metrics")
    if metrics is not None and not re.match(r"^[0-9a-zA-Z.\-]+:[0-9]{1,5}$", str(metrics)):
        raise _fail(path, "indexer.metrics", 'must be "host:port"')
    canonical = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return IndexerConfig(
        database=database,
        chains=chains,
        poll_interval=_number(data.get("poll_interval", 1.0), path, "indexer.poll_interval", 0.01),
        metrics=str(metrics) if metrics is not None else None,
        digest="sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        source=str(path),
        raw=data,
    )


def _chain(raw: Any, path: Path, base: Path, key: str) -> ChainConfig:
    data = _mapping(raw, _CHAIN, path, key)
    for required in ("name", "rpc", "contracts"):
        if required not in data:
            raise _fail(path, f"{key}.{required}", "missing")
    name = str(data["name"])
    if not _NAME.match(name):
        raise _fail(path, f"{key}.name", "lower-case letters, digits and _, starting with a letter")
    rpc = str(data["rpc"])
    if not rpc.startswith(("http://", "https://")):
        raise _fail(path, f"{key}.rpc", "must be an http:// or https:// URL")
    contracts_raw = data["contracts"]
    if not isinstance(contracts_raw, list) or not contracts_raw:
        raise _fail(path, f"{key}.contracts", "must be a non-empty list")
    contracts = tuple(
        _contract(c, path, base, f"{key}.contracts[{i}]") for i, c in enumerate(contracts_raw)
    )
    by_name = {c.name: c for c in contracts}
    if len(by_name) != len(contracts):
        raise _fail(path, f"{key}.contracts", "two contracts have the same name")
    for i, contract in enumerate(contracts):
        if contract.factory is None:
            continue
        fkey = f"{key}.contracts[{i}].factory"
        parent = by_name.get(contract.factory.contract)
        if parent is None or parent.address is None:
            raise _fail(path, f"{fkey}.contract", "must name a contract with an address")
        decoder = next(
            (d for d in parent.events.by_topic.values() if d.spec.event == contract.factory.event),
            None,
        )
        if decoder is None:
            raise _fail(path, f"{fkey}.event", f"{parent.name} indexes no such event")
        if all(c.name != contract.factory.arg for c in decoder.spec.arg_columns):
            raise _fail(
                path,
                f"{fkey}.arg",
                f"{contract.factory.event} has no argument {contract.factory.arg!r}",
            )
    return ChainConfig(
        name=name,
        rpc=rpc,
        finality_depth=_int(
            data.get("finality_depth", 12), path, f"{key}.finality_depth", 0, 10_000
        ),
        contracts=contracts,
        initial_range=_int(data.get("initial_range", 2000), path, f"{key}.initial_range", 1),
        max_range=_int(data.get("max_range", 100_000), path, f"{key}.max_range", 1),
        concurrency=_int(data.get("concurrency", 4), path, f"{key}.concurrency", 1, 64),
        batch_size=_int(data.get("batch_size", 50), path, f"{key}.batch_size", 1, 1000),
        timeout=_number(data.get("timeout", 20.0), path, f"{key}.timeout", 0.1),
    )


def _contract(raw: Any, path: Path, base: Path, key: str) -> ContractConfig:
    data = _mapping(raw, _CONTRACT, path, key)
    for required in ("name", "abi"):
        if required not in data:
            raise _fail(path, f"{key}.{required}", "missing")
    name = str(data["name"])
    if not _NAME.match(name):
        raise _fail(path, f"{key}.name", "lower-case letters, digits and _, starting with a letter")
    address = data.get("address")
    factory = None
    if "factory" in data:
        fdata = _mapping(data["factory"], _FACTORY, path, f"{key}.factory")
        for required in sorted(_FACTORY):
            if required not in fdata:
                raise _fail(path, f"{key}.factory.{required}", "missing")
        factory = FactoryConfig(str(fdata["contract"]), str(fdata["event"]), str(fdata["arg"]))
        if address is not None:
            raise _fail(path, f"{key}.address", "a factory child has no fixed address")
    elif address is None or not _ADDRESS.match(str(address)):
        raise _fail(path, f"{key}.address", "must be a 0x-prefixed 20-byte hex address")
    events = data.get("events")
    if events is not None and (
        not isinstance(events, list) or not all(isinstance(e, str) for e in events)
    ):
        raise _fail(path, f"{key}.events", "must be a list of event names")
    abi = load_abi(str(data["abi"]), base, f"{path}: {key}.abi")
    try:
        decoders = ContractEvents(name, abi, events)
    except ConfigError as exc:
        raise _fail(path, f"{key}.events", exc.message) from None
    if not decoders.by_topic:
        raise _fail(path, f"{key}.abi", "has no events to index")
    return ContractConfig(
        name=name,
        abi_name=str(data["abi"]),
        events=decoders,
        address=str(address).lower() if address is not None else None,
        start_block=_int(data.get("start_block", 0), path, f"{key}.start_block", 0),
        factory=factory,
    )
