"""The gateway's configuration: parsed once, validated with errors that name the key.

The smallest config (a listen address and one chain with two upstream URLs) must work as
written, so every other setting has a default chosen for a team's own nodes: health
probes every second, a head-lag threshold of a few blocks, a bounded retry budget.
Unknown keys are refused: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opsledger.core import ConfigError

__all__ = [
    "DEFAULT_DENIED",
    "CacheConfig",
    "ChainConfig",
    "GatewayConfig",
    "HealthConfig",
    "KeyConfig",
    "LimitsConfig",
    "RateLimitConfig",
    "TierConfig",
    "UpstreamConfig",
    "parse_config",
]

DEFAULT_DENIED = (
    "admin",
    "debug",
    "personal",
    "miner",
    "txpool",
    "engine",
    # development nodes' control methods: rewind, mine, set balances, impersonate
    "anvil",
    "hardhat",
    "evm",
    # signing with a key the node holds
    "eth_sign",
    "eth_signTransaction",
    "eth_signTypedData",
    "eth_signTypedData_v3",
    "eth_signTypedData_v4",
)
"""Namespaces (``admin``) and whole methods (``eth_sign``) refused unless allowed."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HASHED_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str
    ws_url: str | None = None
    weight: float = 1.0
    tags: tuple[str, ...] = ()
    # Lower is preferred: a managed provider (priority 1) only serves when the team's
    # own nodes (priority 0) cannot.
    priority: int = 0
    # Provider quota in compute units per second (0: unlimited).
    cu_per_second: float = 0.0
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval_s: float = 1.0
    timeout_s: float = 1.0
    max_lag_blocks: int = 3
    # Circuit breaker: this many consecutive failures open it; after cooldown one probe
    # (half-open) decides whether it closes again.
    failure_threshold: int = 3
    cooldown_s: float = 2.0
    # An EWMA latency this many times the best upstream's also trips the breaker.
    slow_factor: float = 20.0


@dataclass(frozen=True, slots=True)
class ChainConfig:
    name: str
    chain_id: int
    upstreams: tuple[UpstreamConfig, ...]
    finality_depth: int = 12
    genesis_hash: str | None = None
    # Blocks older than head minus this need an upstream tagged ``archive`` (when any).
    archive_depth: int = 128
    broadcast_writes: bool = False
    allow: tuple[str, ...] = ()  # namespaces or methods allowed despite the deny list


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_body_bytes: int = 1_048_576
    max_batch: int = 100
    max_logs_range: int = 10_000
    request_timeout_s: float = 10.0
    max_retries: int = 2
    # Hedge a read still unanswered after the upstream's p95, but never sooner than this.
    hedge_min_ms: float = 5.0
    hedge: bool = True
    # Reads due for one upstream in the same event-loop iteration go as one JSON-RPC
    # batch of at most this many (1: one request per read).
    upstream_batch: int = 32


@dataclass(frozen=True, slots=True)
class CacheConfig:
    backend: str = "memory"  # memory | redis | none
    max_bytes: int = 64 * 1024 * 1024
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_s: int = 86_400  # Redis entries expire; in-process entries are LRU-evicted


@dataclass(frozen=True, slots=True)
class TierConfig:
    rps: float
    burst: float


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    hash: str  # "sha256:<hex>" of the key: the key itself is never stored
    tier: str


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    backend: str = "memory"  # memory | redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    tiers: Mapping[str, TierConfig] = field(default_factory=dict)
    keys: tuple[KeyConfig, ...] = ()
    per_ip: TierConfig | None = None  # anonymous use; None: unlimited
    method_costs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    chains: tuple[ChainConfig, ...]
    listen: str = "127.0.0.1:8545"
    health: HealthConfig = HealthConfig()
    limits: LimitsConfig = LimitsConfig()
    cache: CacheConfig = CacheConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    # The admin endpoint's bearer token comes from this environment variable (secrets
    # never live in the config file); unset or empty: the endpoint is disabled.
    admin_token_env: str = "OPSLEDGER_GATEWAY_ADMIN_TOKEN"  # noqa: S105 - a variable name

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def chain(self, name: str) -> ChainConfig | None:
        return next((c for c in self.chains if c.name == name), None)

    def digest(self) -> str:
        """A digest of the effective config: config versions are recorded by digest."""
        data = asdict(self)
        encoded = json.dumps(data, sort_keys=True, default=str).encode()
        return "sha256:" + hashlib.sha256(encoded).hexdigest()


class _Reader:
    """Reads one mapping, naming ``prefix.key`` in every error and refusing unknown keys."""

    def __init__(self, data: Any, prefix: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise self._error(prefix, "must be a mapping", source)
        self.data = data
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    @staticmethod
    def _error(key: str, reason: str, source: str) -> ConfigError:
        where = f"{source}: " if source else ""
        return ConfigError(f"{where}{key}: {reason}", key=key)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> ConfigError:
        return self._error(self.key(name), reason, self.source)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"must be {_kind_name(kind)}, not a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {_kind_name(kind)}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = float(self.get(name, (int, float), default))
        if value < minimum:
            raise self.error(name, f"must be >= {minimum:g}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = int(self.get(name, int, default))
        if value < minimum:
            raise self.error(name, f"must be >= {minimum}")
        return value

    def child(self, name: str) -> _Reader:
        return _Reader(self.get(name, Mapping, {}), self.key(name), self.source)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(str(unknown[0]), "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(names.get(k, "a mapping" if k is Mapping else k.__name__) for k in kinds)


def _url(reader: _Reader, name: str, schemes: tuple[str, ...], required: bool) -> str | None:
    value = reader.get(name, str)
    if value is None:
        if required:
            raise reader.error(name, "is required")
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise reader.error(name, f"must be a {'/'.join(schemes)} URL with a host")
    return str(value)


def _name(reader: _Reader, key: str = "name") -> str:
    value = reader.get(key, str)
    if value is None:
        raise reader.error(key, "is required")
    if not _NAME.match(value):
        raise reader.error(key, "must be lower-case letters, digits, '.', '_' or '-'")
    return str(value)


def _strings(reader: _Reader, name: str) -> tuple[str, ...]:
    values = reader.get(name, list, [])
    if not all(isinstance(v, str) for v in values):
        raise reader.error(name, "must be a list of strings")
    return tuple(values)


def _upstream(data: Any, prefix: str, source: str) -> UpstreamConfig:
    r = _Reader(data, prefix, source)
    upstream = UpstreamConfig(
        name=_name(r),
        url=_url(r, "url", ("http", "https"), True) or "",
        ws_url=_url(r, "ws_url", ("ws", "wss"), False),
        weight=r.number("weight", 1.0, minimum=0.0),
        tags=_strings(r, "tags"),
        priority=r.integer("priority", 0),
        cu_per_second=r.number("cu_per_second", 0.0),
        timeout_s=r.number("timeout_s", 5.0, minimum=0.01),
    )
    r.finish()
    return upstream


def _chain(data: Any, prefix: str, source: str) -> ChainConfig:
    r = _Reader(data, prefix, source)
    name = _name(r)
    chain_id = r.get("chain_id", int)
    if chain_id is None:
        raise r.error("chain_id", "is required")
    raw = r.get("upstreams", list)
    if not raw:
        raise r.error("upstreams", "must list at least one upstream")
    upstreams = tuple(_upstream(u, f"{r.key('upstreams')}[{i}]", source) for i, u in enumerate(raw))
    names = [u.name for u in upstreams]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise r.error("upstreams", f"upstream name {duplicate!r} is used twice")
    genesis = r.get("genesis_hash", str)
    if genesis is not None and not re.match(r"^0x[0-9a-fA-F]{64}$", genesis):
        raise r.error("genesis_hash", "must be a 0x-prefixed 32-byte hex hash")
    chain = ChainConfig(
        name=name,
        chain_id=int(chain_id),
        upstreams=upstreams,
        finality_depth=r.integer("finality_depth", 12),
        genesis_hash=genesis.lower() if genesis else None,
        archive_depth=r.integer("archive_depth", 128, minimum=1),
        broadcast_writes=bool(r.get("broadcast_writes", bool, False)),
        allow=_strings(r, "allow"),
    )
    r.finish()
    return chain


def _tier(r: _Reader) -> TierConfig:
    tier = TierConfig(rps=r.number("rps", 10.0, minimum=0.001), burst=r.number("burst", 0.0))
    r.finish()
    return TierConfig(rps=tier.rps, burst=tier.burst or tier.rps)


def _rate_limits(r: _Reader) -> RateLimitConfig:
    backend = r.get("backend", str, "memory")
    if backend not in ("memory", "redis"):
        raise r.error("backend", "must be memory or redis")
    tiers_reader = r.child("tiers")
    tiers = {
        str(name): _tier(_Reader(value, tiers_reader.key(str(name)), r.source))
        for name, value in tiers_reader.data.items()
    }
    keys: list[KeyConfig] = []
    for i, item in enumerate(r.get("keys", list, [])):
        kr = _Reader(item, f"{r.key('keys')}[{i}]", r.source)
        hashed = kr.get("hash", str)
        if hashed is None or not _HASHED_KEY.match(hashed):
            raise kr.error("hash", "must be sha256:<64 hex> (`opsledger gateway keys hash`)")
        tier = kr.get("tier", str)
        if tier not in tiers:
            raise kr.error("tier", f"must name one of rate_limits.tiers ({sorted(tiers)})")
        keys.append(KeyConfig(name=_name(kr), hash=hashed, tier=tier))
        kr.finish()
    per_ip = None
    if r.data.get("per_ip") is not None:
        per_ip = _tier(r.child("per_ip"))
    r.used.add("per_ip")
    costs_reader = r.child("method_costs")
    costs: dict[str, float] = {}
    for method in costs_reader.data:
        costs[str(method)] = costs_reader.number(str(method), 1.0)
    config = RateLimitConfig(
        backend=backend,
        redis_url=r.get("redis_url", str, "redis://127.0.0.1:6379/0"),
        tiers=tiers,
        keys=tuple(keys),
        per_ip=per_ip,
        method_costs=costs,
    )
    r.finish()
    return config


def parse_config(data: Any, source: str = "") -> GatewayConfig:
    """The gateway section (``{listen, chains, ...}``) as a ``GatewayConfig``.

    ``source`` (a file name) prefixes every error so the user knows where to look.
    """
    r = _Reader(data, "gateway", source)
    listen = r.get("listen", str, "127.0.0.1:8545")
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise r.error("listen", "must be HOST:PORT, e.g. 127.0.0.1:8545")
    raw_chains = r.get("chains", list)
    if not raw_chains:
        raise r.error("chains", "must list at least one chain")
    chains = tuple(_chain(c, f"gateway.chains[{i}]", source) for i, c in enumerate(raw_chains))
    names = [c.name for c in chains]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise r.error("chains", f"chain name {duplicate!r} is used twice")

    h = r.child("health")
    health = HealthConfig(
        interval_s=h.number("interval_s", 1.0, minimum=0.05),
        timeout_s=h.number("timeout_s", 1.0, minimum=0.01),
        max_lag_blocks=h.integer("max_lag_blocks", 3),
        failure_threshold=h.integer("failure_threshold", 3, minimum=1),
        cooldown_s=h.number("cooldown_s", 2.0),
        slow_factor=h.number("slow_factor", 20.0, minimum=1.0),
    )
    h.finish()
    lim = r.child("limits")
    limits = LimitsConfig(
        max_body_bytes=lim.integer("max_body_bytes", 1_048_576, minimum=64),
        max_batch=lim.integer("max_batch", 100, minimum=1),
        max_logs_range=lim.integer("max_logs_range", 10_000, minimum=1),
        request_timeout_s=lim.number("request_timeout_s", 10.0, minimum=0.05),
        max_retries=lim.integer("max_retries", 2),
        hedge_min_ms=lim.number("hedge_min_ms", 5.0),
        hedge=bool(lim.get("hedge", bool, True)),
        upstream_batch=lim.integer("upstream_batch", 32, minimum=1),
    )
    lim.finish()
    c = r.child("cache")
    backend = c.get("backend", str, "memory")
    if backend not in ("memory", "redis", "none"):
        raise c.error("backend", "must be memory, redis or none")
    cache = CacheConfig(
        backend=backend,
        max_bytes=c.integer("max_bytes", 64 * 1024 * 1024, minimum=1024),
        redis_url=c.get("redis_url", str, "redis://127.0.0.1:6379/0"),
        ttl_s=c.integer("ttl_s", 86_400, minimum=1),
    )
    c.finish()
    rate_limits = _rate_limits(r.child("rate_limits"))
    config = GatewayConfig(
        chains=chains,
        listen=listen,
        health=health,
        limits=limits,
        cache=cache,
        rate_limits=rate_limits,
        admin_token_env=r.get("admin_token_env", str, "OPSLEDGER_GATEWAY_ADMIN_TOKEN"),
    )
    r.finish()
    return config
