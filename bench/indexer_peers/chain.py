"""The benchmark chain: generated once on anvil, saved with ``--dump-state``, reused.

Every indexer in ``bench/indexer.py`` reads the same chain, so it is built once per
(contract sources, size, anvil version) and cached under ``bench/results/indexer-chain/``.
Two Vyper contracts (``contracts/BenchNFT.vy``, an ERC-721 with a batch mint, and
``contracts/BenchToken.vy``, an ERC-20 with a batch transfer) are deployed and exercised
over a few thousand blocks with automining off: each block gets a handful of transactions
sent in one JSON-RPC batch and then one ``evm_mine``. Batch calls (several ``Transfer``
logs per transaction) keep generation to seconds while indexers still see one log per
event, which is what they are measured on.

After reloading with ``--load-state`` anvil serves the old blocks, receipts and logs, so
``eth_getLogs`` and ``eth_getBlockByNumber`` work for the whole history (checked by
``ensure_chain``: a reload whose log count differs from the generation raises).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from opsledger.testing.anvil import Anvil, anvil_binary

HERE = Path(__file__).resolve().parent
CONTRACTS = HERE / "contracts"
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
APPROVAL_TOPIC = "0x" + keccak(text="Approval(address,address,uint256)").hex()


@dataclass(frozen=True)
class ChainSize:
    """How big a chain to build: ``blocks`` blocks of ~8 events each (full: ~24,000)."""

    blocks: int
    mints_per_block: int = 4
    token_receivers_per_block: int = 3
    nft_transfers_per_block: int = 1


# Bump when ``generate`` changes what it sends: the cached chains are keyed by it.
GENERATOR_VERSION = "1"
QUICK = ChainSize(blocks=250)
FULL = ChainSize(blocks=3000)


@dataclass(frozen=True)
class ChainInfo:
    """What the generation produced; saved beside the state as ``meta.json``."""

    state_file: str
    chain_id: int
    nft: str
    token: str
    deploy_block: int
    head: int
    events: int
    nft_events: int
    token_events: int
    generated_seconds: float


class Rpc:
    """A tiny synchronous JSON-RPC client (httpx) that counts the calls it makes."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url
        self.calls = 0
        self._ids = 0
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _payload(self, method: str, params: Sequence[Any]) -> dict[str, Any]:
        self._ids += 1
        return {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        self.calls += 1
        reply = self._http.post(self.url, json=self._payload(method, params)).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        self.calls += 1
        replies = self._http.post(self.url, json=[self._payload(m, p) for m, p in calls]).json()
        replies.sort(key=lambda r: r["id"])
        errors = [r["error"] for r in replies if "error" in r]
        if errors:
            raise RuntimeError(f"batch: {errors[0]}")
        return [r["result"] for r in replies]


def compile_contract(name: str) -> tuple[str, list[dict[str, Any]]]:
    """Bytecode and ABI of ``contracts/{name}.vy`` with the pinned vyper (0.4.3)."""
    import vyper  # type: ignore[import-untyped]  # imported here: compiling is slow to import and only needed on a miss

    out = vyper.compile_code(
        (CONTRACTS / f"{name}.vy").read_text(), output_formats=["bytecode", "abi"]
    )
    return str(out["bytecode"]), list(out["abi"])


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def calldata(signature: str, types: list[str], args: list[Any]) -> str:
    return "0x" + (selector(signature) + encode(types, args)).hex()


def _cache_key(size: ChainSize) -> str:
    digest = hashlib.sha256()
    for path in sorted(CONTRACTS.glob("*.vy")):
        digest.update(path.read_bytes())
    digest.update(json.dumps(asdict(size), sort_keys=True).encode())
    digest.update(Path(anvil_binary()).name.encode())
    digest.update(GENERATOR_VERSION.encode())
    return digest.hexdigest()[:16]


def _deploy(rpc: Rpc, sender: str, bytecode: str) -> tuple[str, int]:
    """Deploy with automining on (the transaction mines its own block)."""
    tx = rpc.call(
        "eth_sendTransaction", [{"from": sender, "data": bytecode, "gas": hex(3_000_000)}]
    )
    receipt = wait_receipt(rpc, tx)
    return str(receipt["contractAddress"]), int(receipt["blockNumber"], 16)


def wait_receipt(rpc: Rpc, tx: str, timeout: float = 10.0) -> dict[str, Any]:
    """The receipt once mined (anvil's automine lands a moment after the send returns)."""
    deadline = time.monotonic() + timeout
    while True:
        receipt = rpc.call("eth_getTransactionReceipt", [tx])
        if receipt is not None:
            return dict(receipt)
        if time.monotonic() > deadline:
            raise TimeoutError(f"transaction {tx} not mined in {timeout}s")
        time.sleep(0.02)


def generate(node: Anvil, size: ChainSize, seed: int = 7) -> tuple[str, str, int]:
    """Deploy both contracts and fill ``size.blocks`` blocks; returns (nft, token, deploy block)."""
    rpc = Rpc(node.url)
    try:
        accounts: list[str] = rpc.call("eth_accounts")
        owner = accounts[0]
        nft, deploy_block = _deploy(rpc, owner, compile_contract("BenchNFT")[0])
        token, _ = _deploy(rpc, owner, compile_contract("BenchToken")[0])
        minted = rpc.call(
            "eth_sendTransaction",
            [
                {
                    "from": owner,
                    "to": token,
                    "gas": hex(200_000),
                    "data": calldata(
                        "mint(address,uint256)", ["address", "uint256"], [owner, 10**30]
                    ),
                }
            ],
        )
        wait_receipt(rpc, minted)
        rpc.call("evm_setAutomine", [False])
        rng = random.Random(seed)
        owners: dict[int, str] = {}
        next_id = 0
        gas = hex(1_500_000)
        for _ in range(size.blocks):
            txs: list[tuple[str, Sequence[Any]]] = []
            receivers = [rng.choice(accounts) for _ in range(size.mints_per_block)]
            txs.append(
                (
                    "eth_sendTransaction",
                    [
                        {
                            "from": owner,
                            "to": nft,
                            "gas": gas,
                            "data": calldata("mint_many(address[])", ["address[]"], [receivers]),
                        }
                    ],
                )
            )
            for _ in range(size.nft_transfers_per_block):
                if not owners:
                    break
                token_id = rng.randrange(next_id)
                holder = owners[token_id]
                receiver = rng.choice([a for a in accounts if a != holder])
                owners[token_id] = receiver
                txs.append(
                    (
                        "eth_sendTransaction",
                        [
                            {
                                "from": holder,
                                "to": nft,
                                "gas": gas,
                                "data": calldata(
                                    "transferFrom(address,address,uint256)",
                                    ["address", "address", "uint256"],
                                    [holder, receiver, token_id],
                                ),
                            }
                        ],
                    )
                )
            for receiver in receivers:
                owners[next_id] = receiver
                next_id += 1
            payees = [rng.choice(accounts[1:]) for _ in range(size.token_receivers_per_block)]
            txs.append(
                (
                    "eth_sendTransaction",
                    [
                        {
                            "from": owner,
                            "to": token,
                            "gas": gas,
                            "data": calldata(
                                "transfer_many(address[],uint256)",
                                ["address[]", "uint256"],
                                [payees, rng.randrange(1, 10**20)],
                            ),
                        }
                    ],
                )
            )
            rpc.batch(txs)
            rpc.call("evm_mine")
        rpc.call("evm_setAutomine", [True])
        return nft, token, deploy_block
    finally:
        rpc.close()


def count_logs(url: str, addresses: list[str], from_block: int, to_block: int) -> dict[str, int]:
    """Logs per address over the range, in one ``eth_getLogs`` call."""
    rpc = Rpc(url)
    try:
        logs = rpc.call(
            "eth_getLogs",
            [{"address": addresses, "fromBlock": hex(from_block), "toBlock": hex(to_block)}],
        )
    finally:
        rpc.close()
    counts = {address.lower(): 0 for address in addresses}
    for log in logs:
        counts[log["address"].lower()] += 1
    return counts


def _check_receipts(url: str, head: int) -> None:
    """Every generated transaction succeeded (a reverted batch would shrink the chain)."""
    rpc = Rpc(url)
    try:
        sample = rpc.call("eth_getBlockByNumber", [hex(head), False])
        for tx in sample["transactions"]:
            receipt = rpc.call("eth_getTransactionReceipt", [tx])
            if receipt["status"] != "0x1":
                raise RuntimeError(f"generated transaction {tx} reverted in block {head}")
    finally:
        rpc.close()


def ensure_chain(results: Path, size: ChainSize, log: Any = print) -> ChainInfo:
    """The cached chain for ``size``, generating (and dumping) it first when missing."""
    folder = results.resolve() / "indexer-chain" / _cache_key(size)
    meta_file = folder / "meta.json"
    if meta_file.exists():
        saved = json.loads(meta_file.read_text())
        saved["state_file"] = str(folder / "state.json")  # the folder may have moved
        return ChainInfo(**saved)
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "state.json"
    log(f"generating the benchmark chain ({size.blocks} blocks) into {folder} ...")
    started = time.perf_counter()
    node = Anvil.start(extra_args=["--dump-state", str(state), "--gas-limit", "100000000"])
    try:
        nft, token, deploy_block = generate(node, size)
        head = node.block_number()
        _check_receipts(node.url, head)
        counts = count_logs(node.url, [nft, token], deploy_block, head)
    finally:
        node.stop()
    _wait_written(state)
    elapsed = time.perf_counter() - started
    info = ChainInfo(
        state_file=str(state),
        chain_id=node.chain_id,
        nft=nft,
        token=token,
        deploy_block=deploy_block,
        head=head,
        events=sum(counts.values()),
        nft_events=counts[nft.lower()],
        token_events=counts[token.lower()],
        generated_seconds=round(elapsed, 2),
    )
    reloaded = start_node(info)
    try:
        again = count_logs(reloaded.url, [nft, token], deploy_block, head)
    finally:
        reloaded.stop()
    if again != counts:
        raise RuntimeError(f"reloaded chain differs: {again} != {counts}")
    meta_file.write_text(json.dumps(asdict(info), indent=2))
    log(f"  {info.events} events over {head - deploy_block} blocks in {elapsed:.1f} s")
    return info


def _wait_written(path: Path, timeout: float = 60.0) -> None:
    """Wait for anvil's dump: npm's ``anvil`` is a node wrapper that exits before the real
    binary has finished writing ``--dump-state``, so wait for a stable, parseable file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                json.loads(path.read_text())
                return
            except ValueError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"anvil did not write {path} on exit within {timeout}s")


def start_node(info: ChainInfo, extra: Sequence[str] = ()) -> Anvil:
    """A fresh anvil serving the saved chain (automine on, so reorg tests can add blocks)."""
    return Anvil.start(
        chain_id=info.chain_id,
        extra_args=["--load-state", info.state_file, "--gas-limit", "100000000", *extra],
    )
