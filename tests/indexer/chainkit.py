"""Test kit: compile the Vyper contracts, deploy them on anvil, make traffic, and recompute
the truth from the chain independently of the indexer (plain eth_getLogs, hand-decoded
topics, ownerOf/balanceOf calls)."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vyper  # type: ignore[import-untyped]
from eth_abi.abi import encode
from eth_utils.crypto import keccak

from opsledger.testing.anvil import Anvil

CONTRACTS = Path(__file__).parent / "contracts"
ZERO = "0x" + "0" * 40


@functools.cache
def compiled(name: str) -> tuple[list[dict[str, Any]], str]:
    out = vyper.compile_code(
        (CONTRACTS / f"{name}.vy").read_text(), output_formats=["abi", "bytecode"]
    )
    return out["abi"], out["bytecode"]


def calldata(signature: str, types: Sequence[str], args: Sequence[Any]) -> str:
    selector = keccak(text=signature)[:4]
    return "0x" + (selector + encode(list(types), list(args))).hex()


def topic_address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


@dataclass
class Chain:
    node: Anvil
    accounts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accounts = [a.lower() for a in self.node.rpc("eth_accounts")]

    def send(self, sender: str, to: str | None, data: str) -> dict[str, Any]:
        tx: dict[str, Any] = {"from": sender, "data": data, "gas": hex(15_000_000)}
        if to is not None:
            tx["to"] = to
        tx_hash = self.node.rpc("eth_sendTransaction", [tx])
        return self.receipt(tx_hash)

    def receipt(self, tx_hash: str) -> dict[str, Any]:
        """Wait (bounded) for the receipt: automine may answer before the block is stored."""
        deadline = time.monotonic() + 10
        while True:
            receipt = self.node.rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                assert receipt["status"] == "0x1", receipt
                return dict(receipt)
            assert time.monotonic() < deadline, f"no receipt for {tx_hash}"
            time.sleep(0.01)

    def send_nowait(self, sender: str, to: str, data: str) -> str:
        tx = {"from": sender, "to": to, "data": data, "gas": hex(15_000_000)}
        return str(self.node.rpc("eth_sendTransaction", [tx]))

    def deploy(self, name: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> str:
        _, bytecode = compiled(name)
        data = bytecode + encode(list(types), list(args)).hex()
        receipt = self.send(self.accounts[0], None, data)
        return str(receipt["contractAddress"]).lower()

    def call(self, to: str, data: str, block: str = "latest") -> str:
        return str(self.node.rpc("eth_call", [{"to": to, "data": data}, block]))

    def head(self) -> int:
        return self.node.block_number()

    def logs(self, address: str | list[str], topic0: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"fromBlock": "0x0", "toBlock": "latest", "address": address}
        if topic0:
            params["topics"] = [topic0]
        return list(self.node.rpc("eth_getLogs", [params], timeout=60))


TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
APPROVAL = "0x" + keccak(text="Approval(address,address,uint256)").hex()


# -- traffic ---------------------------------------------------------------------------------
@dataclass
class NftState:
    address: str
    owners: dict[int, str] = field(default_factory=dict)
    next_id: int = 1


def nft_mint(chain: Chain, nft: NftState, receiver: str, count: int) -> None:
    first = nft.next_id
    chain.send(
        chain.accounts[0],
        nft.address,
        calldata(
            "mint_many(address,uint256,uint256)",
            ["address", "uint256", "uint256"],
            [receiver, first, count],
        ),
    )
    for token in range(first, first + count):
        nft.owners[token] = receiver
    nft.next_id += count


def nft_moves(chain: Chain, nft: NftState, rng: random.Random, count: int) -> None:
    """``count`` random moves, grouped per current owner (one tx per owner)."""
    live = [t for t, o in nft.owners.items() if o != ZERO]
    chosen = rng.sample(live, min(count, len(live)))
    by_owner: dict[str, list[int]] = {}
    for token in chosen:
        by_owner.setdefault(nft.owners[token], []).append(token)
    for owner, tokens in by_owner.items():
        receivers = [rng.choice(chain.accounts) for _ in tokens]
        chain.send(
            owner,
            nft.address,
            calldata(
                "move_many(uint256[],address[])", ["uint256[]", "address[]"], [tokens, receivers]
            ),
        )
        for token, receiver in zip(tokens, receivers, strict=True):
            nft.owners[token] = receiver


def nft_burn(chain: Chain, nft: NftState, token: int) -> None:
    chain.send(nft.owners[token], nft.address, calldata("burn(uint256)", ["uint256"], [token]))
    nft.owners[token] = ZERO


def token_mint(chain: Chain, token: str, receivers: list[str], amounts: list[int]) -> None:
    chain.send(
        chain.accounts[0],
        token,
        calldata(
            "mint_many(address[],uint256[])", ["address[]", "uint256[]"], [receivers, amounts]
        ),
    )


def token_transfers(
    chain: Chain, token: str, sender: str, receivers: list[str], amounts: list[int]
) -> None:
    chain.send(
        sender,
        token,
        calldata(
            "transfer_many(address[],uint256[])", ["address[]", "uint256[]"], [receivers, amounts]
        ),
    )


def balance_of(chain: Chain, contract: str, holder: str) -> int:
    return int(chain.call(contract, calldata("balanceOf(address)", ["address"], [holder])), 16)


def owner_of(chain: Chain, contract: str, token: int) -> str:
    return topic_address(chain.call(contract, calldata("ownerOf(uint256)", ["uint256"], [token])))


# -- truth -------------------------------------------------------------------------------------
def truth_transfers(
    chain: Chain, address: str, chain_name: str, value_in_data: bool
) -> list[dict[str, Any]]:
    """Every Transfer log, decoded by hand (topics sliced, data parsed as one uint256)."""
    rows = []
    for log in chain.logs(address, TRANSFER):
        third = int(log["data"], 16) if value_in_data else int(log["topics"][3], 16)
        rows.append(
            {
                "chain": chain_name,
                "block_number": int(log["blockNumber"], 16),
                "block_hash": log["blockHash"].lower(),
                "tx_hash": log["transactionHash"].lower(),
                "log_index": int(log["logIndex"], 16),
                "address": log["address"].lower(),
                "from": topic_address(log["topics"][1]),
                "to": topic_address(log["topics"][2]),
                ("value" if value_in_data else "token_id"): third,
            }
        )
    return sorted(rows, key=lambda r: (r["block_number"], r["log_index"]))


def all_rows(store: Any, table: str, **filters: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = store.query(table, filters, cursor, 1000, "asc")
        rows += page
        if cursor is None:
            return rows


def strip(rows: list[dict[str, Any]], *drop: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def assert_exact(
    chain: Chain, store: Any, nft: str, token: str | None, name: str = "local", depth: int = 3
) -> None:
    """Every table equals the truth recomputed from the chain right now."""
    head = chain.head()
    got = all_rows(store, "nft_transfer", chain=name)
    want = truth_transfers(chain, nft, name, value_in_data=False)
    assert strip(got, "final") == want
    assert all(r["final"] == (r["block_number"] <= head - depth) for r in got)
    owners = {r["token_id"]: r["owner"] for r in all_rows(store, "nft_owner", chain=name)}
    tokens = {r["token_id"] for r in want}
    on_chain = {t: owner_of(chain, nft, t) for t in tokens}
    assert owners == {t: o for t, o in on_chain.items() if o != ZERO}
    if token is None:
        return
    got_tokens = all_rows(store, "token_transfer", chain=name)
    assert strip(got_tokens, "final") == truth_transfers(chain, token, name, value_in_data=True)
    balances = {r["holder"]: r["balance"] for r in all_rows(store, "token_balance", chain=name)}
    truth = {a: balance_of(chain, token, a) for a in chain.accounts}
    assert balances == {a: b for a, b in truth.items() if b}


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
