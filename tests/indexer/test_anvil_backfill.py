"""Backfill against a real anvil: thousands of events over many blocks, every table
compared with the truth recomputed from the chain."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest

from opsledger.indexer.storage import Store
from tests.indexer.chainkit import (
    Chain,
    NftState,
    all_rows,
    balance_of,
    nft_burn,
    nft_mint,
    nft_moves,
    owner_of,
    strip,
    token_mint,
    token_transfers,
    truth_transfers,
)
from tests.indexer.conftest import index_once, write_config

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def make_traffic(chain: Chain, rng: random.Random) -> tuple[NftState, str]:
    nft = NftState(chain.deploy("nft"))
    token = chain.deploy("token")
    accounts = chain.accounts
    for i in range(12):
        nft_mint(chain, nft, accounts[i % 5], 100)
        chain.node.mine(rng.randint(0, 3))
    for _ in range(10):
        nft_moves(chain, nft, rng, 60)
        chain.node.mine(rng.randint(0, 2))
    for token_id in rng.sample(sorted(nft.owners), 15):
        nft_burn(chain, nft, token_id)
    huge = 2**200
    for _ in range(6):
        receivers = [rng.choice(accounts) for _ in range(60)]
        amounts = [rng.choice([1, 10**18, huge + rng.randint(0, 10**9)]) for _ in receivers]
        token_mint(chain, token, receivers, amounts)
    for i in range(12):
        sender = accounts[i % 5]
        have = balance_of(chain, token, sender)
        receivers = [rng.choice(accounts) for _ in range(30)]
        amounts = [have // 64 for _ in receivers]
        token_transfers(chain, token, sender, receivers, amounts)
        chain.node.mine(rng.randint(0, 2))
    return nft, token


def check_exact(chain: Chain, store: Store, nft: NftState, token: str, name: str = "local") -> None:
    head = chain.head()
    got = all_rows(store, "nft_transfer", chain=name)
    want = truth_transfers(chain, nft.address, name, value_in_data=False)
    assert len(want) > 1000
    assert strip(got, "final") == want
    depth = 3
    assert all(r["final"] == (r["block_number"] <= head - depth) for r in got)
    owners = {r["token_id"]: r["owner"] for r in all_rows(store, "nft_owner", chain=name)}
    chain_owners = {t: owner_of(chain, nft.address, t) for t in nft.owners}
    assert owners == {t: o for t, o in chain_owners.items() if o != "0x" + "0" * 40}
    assert owners == {t: o for t, o in nft.owners.items() if o != "0x" + "0" * 40}
    got_tokens = all_rows(store, "token_transfer", chain=name)
    assert strip(got_tokens, "final") == truth_transfers(chain, token, name, value_in_data=True)
    balances = {r["holder"]: r["balance"] for r in all_rows(store, "token_balance", chain=name)}
    truth = {a: balance_of(chain, token, a) for a in chain.accounts}
    assert balances == {a: b for a, b in truth.items() if b}
    assert max(balances.values()) > 2**200  # uint256 kept exact


def test_backfill_matches_the_chain(chain: Chain, tmp_path: Path) -> None:
    nft, token = make_traffic(chain, random.Random(7))
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": "sqlite:///index.db",
            "chains": [
                {
                    "name": "local",
                    "rpc": chain.node.url,
                    "finality_depth": 3,
                    "initial_range": 4,
                    "concurrency": 3,
                    "contracts": [
                        {"name": "nft", "address": nft.address, "abi": "erc721"},
                        {"name": "token", "address": token, "abi": "erc20"},
                    ],
                }
            ],
        },
    )
    service = index_once(config)
    store = Store.open(config.database)
    check_exact(chain, store, nft, token)
    state = store.chain_state("local")
    assert state is not None and state.height == chain.head()
    assert service.rpcs["local"].stats.calls > 0
    assert gc.isenabled()  # the backfill pauses the cyclic collector only while it runs
    # Running again at the same head writes nothing and changes nothing.
    index_once(config)
    check_exact(chain, store, nft, token)
