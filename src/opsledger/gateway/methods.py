"""What each JSON-RPC method is, as far as routing, retrying and caching are concerned.

Hand-written tables: no library classifies Ethereum methods by idempotence and by where
their block parameter sits, and getting either wrong is a correctness bug (a replayed
write, a stale cached read), so the table is explicit and unit-tested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "BLOCK_PARAM",
    "DEFAULT_COSTS",
    "HASH_PINNED",
    "Kind",
    "MethodInfo",
    "classify",
    "is_denied",
    "metric_label",
]


class Kind(Enum):
    READ = "read"  # idempotent: safe to retry, hedge, coalesce
    WRITE = "write"  # never blindly retried
    STATEFUL = "stateful"  # filters and subscriptions: tied to one upstream, not retried
    DENIED = "denied"


# Position of the block parameter (number or tag) for methods that take one.
BLOCK_PARAM: dict[str, int] = {
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_getStorageAt": 2,
    "eth_call": 1,
    "eth_estimateGas": 1,
    "eth_getProof": 2,
    "eth_getBlockByNumber": 0,
    "eth_getBlockTransactionCountByNumber": 0,
    "eth_getUncleCountByBlockNumber": 0,
    "eth_getTransactionByBlockNumberAndIndex": 0,
    "eth_getUncleByBlockNumberAndIndex": 0,
    "eth_getBlockReceipts": 0,
    "eth_feeHistory": 1,
}

# Results that are fixed by the hash they are asked for (a block hash is immutable).
HASH_PINNED = frozenset(
    {
        "eth_getBlockByHash",
        "eth_getBlockTransactionCountByHash",
        "eth_getUncleCountByBlockHash",
        "eth_getTransactionByBlockHashAndIndex",
        "eth_getUncleByBlockHashAndIndex",
    }
)

# Results tied to a transaction hash: cacheable once their block is final.
TX_PINNED = frozenset(
    {"eth_getTransactionByHash", "eth_getTransactionReceipt"},
)

# Results that never change for a chain.
CHAIN_CONSTANT = frozenset({"eth_chainId", "net_version"})

# Results that answer "now" with no block parameter: live until the next head.
HEAD_SCOPED = frozenset({"eth_blockNumber", "eth_gasPrice", "eth_maxPriorityFeePerGas"})

_WRITES = frozenset({"eth_sendRawTransaction", "eth_sendTransaction", "eth_sendRawTransactionSync"})
_STATEFUL = frozenset(
    {
        "eth_newFilter",
        "eth_newBlockFilter",
        "eth_newPendingTransactionFilter",
        "eth_getFilterChanges",
        "eth_getFilterLogs",
        "eth_uninstallFilter",
        "eth_subscribe",
        "eth_unsubscribe",
    }
)

# Compute-unit weights in the manner of managed providers' billing (relative costs).
DEFAULT_COSTS: dict[str, float] = {
    "eth_blockNumber": 10,
    "eth_chainId": 0,
    "net_version": 0,
    "eth_getBalance": 19,
    "eth_getCode": 26,
    "eth_getTransactionCount": 26,
    "eth_getStorageAt": 17,
    "eth_call": 26,
    "eth_estimateGas": 87,
    "eth_getBlockByNumber": 16,
    "eth_getBlockByHash": 21,
    "eth_getLogs": 75,
    "eth_getTransactionReceipt": 15,
    "eth_getTransactionByHash": 17,
    "eth_sendRawTransaction": 250,
    "eth_feeHistory": 10,
    "eth_gasPrice": 19,
}


_KNOWN = frozenset(
    {*BLOCK_PARAM, *HASH_PINNED, *TX_PINNED, *CHAIN_CONSTANT, *HEAD_SCOPED, *_WRITES, *_STATEFUL}
    | set(DEFAULT_COSTS)
    | {"eth_getLogs", "eth_syncing", "net_peerCount", "web3_clientVersion", "eth_accounts"}
)


_READ_NAMESPACES = frozenset({"eth", "net", "web3"})


def _read_namespace(method: str, allowed: Iterable[str]) -> bool:
    """eth/net/web3 methods, and whatever the config allows explicitly (debug_trace*)."""
    namespace = method.partition("_")[0]
    return namespace in _READ_NAMESPACES or bool({method, namespace} & set(allowed))


def metric_label(method: str) -> str:
    """The method as a metric label: known names, else ``other`` (clients choose method
    names, and every distinct label value is a time series kept forever)."""
    return method if method in _KNOWN else "other"


@dataclass(frozen=True, slots=True)
class MethodInfo:
    name: str
    kind: Kind
    block_param: int | None  # index of the block number/tag parameter
    cost: float


def is_denied(method: str, denied: Iterable[str], allowed: Iterable[str]) -> bool:
    """``admin_*``-style namespaces (and listed whole methods) are denied unless allowed.
    Compared without case: ``ADMIN_addPeer`` is ``admin_addPeer`` to a lenient node."""
    lowered = method.lower()
    namespace = lowered.partition("_")[0]
    allowed_set = {a.lower() for a in allowed}
    if lowered in allowed_set or namespace in allowed_set:
        return False
    denied_set = {d.lower() for d in denied}
    return namespace in denied_set or lowered in denied_set


def classify(
    method: str,
    *,
    denied: Iterable[str] = (),
    allowed: Iterable[str] = (),
    costs: dict[str, float] | None = None,
) -> MethodInfo:
    """The routing facts about ``method``; unknown methods are treated as reads that are
    retried but never cached (most node APIs are reads; writes are listed explicitly)."""
    table = costs if costs is not None else DEFAULT_COSTS
    cost = float(table.get(method, DEFAULT_COSTS.get(method, 20)))
    if is_denied(method, denied, allowed):
        kind = Kind.DENIED
    elif method in _WRITES:
        kind = Kind.WRITE
    elif method in _STATEFUL or not _read_namespace(method, allowed):
        # outside the standard read namespaces a method may change node state: one
        # upstream, never retried, hedged or coalesced
        kind = Kind.STATEFUL
    else:
        kind = Kind.READ
    return MethodInfo(method, kind, BLOCK_PARAM.get(method), cost)
