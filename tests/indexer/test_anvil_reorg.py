"""Reorgs while following live: tables exact again, the reorg recorded."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from opsledger.indexer.config import IndexerConfig
from opsledger.indexer.service import IndexerService
from opsledger.indexer.storage import Store
from tests.indexer.chainkit import (
    Chain,
    NftState,
    assert_exact,
    calldata,
    nft_mint,
    nft_moves,
    token_mint,
    wait_until,
)
from tests.indexer.conftest import Recorded, write_config

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

LIVE: list[IndexerService] = []


@contextmanager
def following(config: IndexerConfig, recorder: Recorded) -> Iterator[IndexerService]:
    """The service following live in a thread; stopped (and re-raised) on exit."""
    service = IndexerService(config, recorder)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(service.run(stop=stop))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    service.errors = errors  # type: ignore[attr-defined]
    try:
        yield service
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
    assert not errors, errors


def caught_up(chain: Chain, store: Store, name: str = "local") -> bool:
    for service in LIVE:
        assert not service.errors, service.errors  # type: ignore[attr-defined]
    state = store.chain_state(name)
    return state is not None and state.height == chain.head()


def config_for(chain: Chain, tmp_path: Path, nft: str, token: str) -> IndexerConfig:
    return write_config(
        tmp_path / "indexer.yaml",
        {
            "database": "sqlite:///index.db",
            "poll_interval": 0.05,
            "chains": [
                {
                    "name": "local",
                    "rpc": chain.node.url,
                    "finality_depth": 6,
                    "contracts": [
                        {"name": "nft", "address": nft, "abi": "erc721"},
                        {"name": "token", "address": token, "abi": "erc20"},
                    ],
                }
            ],
        },
    )


def test_reorgs_while_following(chain: Chain, tmp_path: Path) -> None:
    rng = random.Random(3)
    nft = NftState(chain.deploy("nft"))
    token = chain.deploy("token")
    for i in range(4):
        nft_mint(chain, nft, chain.accounts[i], 50)
    token_mint(chain, token, chain.accounts[:5], [10**30] * 5)
    config = config_for(chain, tmp_path, nft.address, token)
    recorder = Recorded()
    store = Store.open(config.database)
    with following(config, recorder) as service:
        LIVE[:] = [service]
        wait_until(lambda: caught_up(chain, store), what="first catch-up")
        assert_exact(chain, store, nft.address, token, depth=6)

        # 1. anvil_reorg: same height, the last 4 blocks replaced by other transactions.
        nft_moves(chain, nft, rng, 40)
        chain.node.mine(2)
        wait_until(lambda: caught_up(chain, store), what="moves indexed")
        before = {b: h for b, (h, _) in store.block_hashes("local").items()}
        head = chain.head()
        replacement = [
            [
                {
                    "from": chain.accounts[0],
                    "to": nft.address,
                    "gas": hex(5_000_000),
                    "data": calldata(
                        "mint_many(address,uint256,uint256)",
                        ["address", "uint256", "uint256"],
                        [chain.accounts[9], 10_000, 30],
                    ),
                },
                0,
            ],
            [
                {
                    "from": chain.accounts[0],
                    "to": token,
                    "gas": hex(5_000_000),
                    "data": calldata(
                        "mint_many(address[],uint256[])",
                        ["address[]", "uint256[]"],
                        [[chain.accounts[8]], [2**255]],
                    ),
                },
                1,
            ],
        ]
        chain.node.rpc("anvil_reorg", [4, replacement])
        assert chain.head() == head
        wait_until(
            lambda: caught_up(chain, store) and len(recorder.of("indexer.reorg")) == 1,
            what="reorg detected",
        )
        wait_until(lambda: store.block_hashes("local").get(head, ("",))[0] != before[head])
        wait_until(lambda: caught_up(chain, store))
        assert_exact(chain, store, nft.address, token, depth=6)
        reorg = recorder.of("indexer.reorg")[0]
        assert reorg["fork_block"] == head - 4
        assert reorg["depth"] == 4
        assert reorg["replaced"] == [before[n] for n in range(head - 3, head + 1)]

        # 2. evm_snapshot / evm_revert, then a longer different branch.
        snapshot = chain.node.rpc("evm_snapshot")
        fork_point = chain.head()
        nft_mint(chain, nft, chain.accounts[5], 20)
        chain.node.mine(1)
        wait_until(lambda: caught_up(chain, store), what="branch A indexed")
        assert chain.node.rpc("evm_revert", [snapshot]) is True
        token_mint(chain, token, [chain.accounts[6]], [12345])
        nft_mint(chain, nft, chain.accounts[6], 7)
        chain.node.mine(3)
        wait_until(lambda: len(recorder.of("indexer.reorg")) == 2, what="second reorg")
        wait_until(lambda: caught_up(chain, store))
        assert_exact(chain, store, nft.address, token, depth=6)
        assert recorder.of("indexer.reorg")[1]["fork_block"] == fork_point
    state = store.chain_state("local")
    assert state is not None and state.reorgs == 2 and state.max_reorg_depth == 4
