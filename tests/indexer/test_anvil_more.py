"""Two chains at once, factory children, range splitting, and a reorg deeper than
finality, against real anvil nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak

from opsledger.indexer.backfill import Backfill
from opsledger.indexer.chain import ChainIndexer, table_specs
from opsledger.indexer.follow import DeepReorg
from opsledger.indexer.rpc import RpcClient, RpcError
from opsledger.indexer.storage import Store
from opsledger.testing.anvil import running_anvil
from tests.indexer.chainkit import (
    Chain,
    NftState,
    all_rows,
    assert_exact,
    calldata,
    nft_mint,
    nft_moves,
    topic_address,
)
from tests.indexer.conftest import index_once, write_config

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def nft_chain(name: str, url: str, address: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "rpc": url,
        "finality_depth": 3,
        **extra,
        "contracts": [{"name": "nft", "address": address, "abi": "erc721"}],
    }


def test_two_chains_at_once(chain: Chain, tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    with running_anvil(chain_id=4242) as other_node:
        other = Chain(other_node)
        nfts = {}
        for name, c in (("one", chain), ("two", other)):
            nft = NftState(c.deploy("nft"))
            for i in range(5):
                nft_mint(c, nft, c.accounts[i], 40 if name == "one" else 30)
            nft_moves(c, nft, rng, 50)
            nfts[name] = nft
        # Same deployer, same nonce: the same address on both chains, told apart by `chain`.
        assert nfts["one"].address == nfts["two"].address
        config = write_config(
            tmp_path / "indexer.yaml",
            {
                "database": "sqlite:///index.db",
                "chains": [
                    nft_chain("one", chain.node.url, nfts["one"].address, initial_range=3),
                    nft_chain("two", other.node.url, nfts["two"].address, initial_range=2),
                ],
            },
        )
        index_once(config)
        store = Store.open(config.database)
        assert_exact(chain, store, nfts["one"].address, None, "one")
        assert_exact(other, store, nfts["two"].address, None, "two")
        assert (
            store.count("nft_transfer", "one") == 250 and store.count("nft_transfer", "two") == 200
        )


def test_factory_children_from_their_creation_block(chain: Chain, tmp_path: Path) -> None:
    template = chain.deploy("child")
    factory = chain.deploy("factory", ["address"], [template])
    created = "0x" + keccak(text="ChildCreated(address,uint256)").hex()
    pinged = "0x" + keccak(text="Pinged(address,uint256)").hex()

    def create() -> str:
        receipt = chain.send(chain.accounts[0], factory, calldata("create()", [], []))
        (log,) = [x for x in receipt["logs"] if x["topics"][0] == created]
        return topic_address(log["topics"][1])

    def ping(child: str, value: int) -> None:
        chain.send(chain.accounts[2], child, calldata("ping(uint256)", ["uint256"], [value]))

    children = [create() for _ in range(3)]
    for i, child in enumerate(children * 3):
        ping(child, i)
    abi_dir = tmp_path
    import json

    from tests.indexer.chainkit import compiled

    (abi_dir / "factory.json").write_text(json.dumps(compiled("factory")[0]))
    (abi_dir / "child.json").write_text(json.dumps(compiled("child")[0]))
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": "sqlite:///index.db",
            "chains": [
                {
                    "name": "local",
                    "rpc": chain.node.url,
                    "finality_depth": 2,
                    "contracts": [
                        {"name": "factory", "address": factory, "abi": "factory.json"},
                        {
                            "name": "pool",
                            "abi": "child.json",
                            "factory": {
                                "contract": "factory",
                                "event": "ChildCreated",
                                "arg": "child",
                            },
                        },
                    ],
                }
            ],
        },
    )
    index_once(config)  # creation and pings fall in one range: children found mid-range
    children.append(create())
    ping(children[-1], 99)
    ping(children[0], 100)
    index_once(config)

    def truth() -> list[tuple[int, int, str, int]]:
        logs = chain.logs(children, pinged)
        return sorted(
            (
                int(x["blockNumber"], 16),
                int(x["logIndex"], 16),
                x["address"].lower(),
                int(x["data"], 16),
            )
            for x in logs
        )

    store = Store.open(config.database)
    got = [
        (r["block_number"], r["log_index"], r["address"], r["amount"])
        for r in all_rows(store, "pool_pinged")
    ]
    assert got == truth() and len(got) == 11
    assert [r["child"] for r in all_rows(store, "factory_child_created")] == children
    assert sorted(c.address for c in store.children("local")) == sorted(children)


class LimitedRpc(RpcClient):
    """Answers like a provider with a result cap when a range spans more than 3 blocks."""

    async def get_logs(
        self, addresses: Sequence[str], topics0: Sequence[str], first: int, last: int
    ) -> list[dict[str, Any]]:
        if last - first > 2:
            self.stats.calls += 1
            raise RpcError(
                "eth_getLogs", {"code": -32005, "message": "query returned more than 10000 results"}
            )
        return await super().get_logs(addresses, topics0, first, last)


def test_ranges_split_when_the_node_refuses(chain: Chain, tmp_path: Path) -> None:
    nft = NftState(chain.deploy("nft"))
    for i in range(20):
        nft_mint(chain, nft, chain.accounts[i % 4], 10)
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": "sqlite:///index.db",
            "chains": [nft_chain("local", chain.node.url, nft.address, initial_range=64)],
        },
    )
    store = Store.open(config.database)
    store.ensure_tables(table_specs(config.chains))

    async def run() -> int:
        async with LimitedRpc(chain.node.url) as rpc:
            backfill = Backfill(ChainIndexer(config.chains[0], store, rpc))
            await backfill.run(chain.head())
            return backfill.splits

    assert asyncio.run(run()) > 0
    assert_exact(chain, store, nft.address, None)


def test_a_reorg_deeper_than_finality_stops_with_an_error(chain: Chain, tmp_path: Path) -> None:
    nft = NftState(chain.deploy("nft"))
    nft_mint(chain, nft, chain.accounts[1], 5)
    chain.node.mine(6)
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": "sqlite:///index.db",
            "chains": [nft_chain("local", chain.node.url, nft.address, finality_depth=2)],
        },
    )
    index_once(config)
    chain.node.rpc("anvil_reorg", [5, []])
    with pytest.raises(DeepReorg, match="deeper than finality_depth"):
        index_once(config)


@pytest.mark.postgres
def test_postgresql_store_end_to_end(chain: Chain, tmp_path: Path) -> None:
    import uuid

    import psycopg

    from tests.indexer.chainkit import token_mint, token_transfers

    nft = NftState(chain.deploy("nft"))
    token = chain.deploy("token")
    for i in range(4):
        nft_mint(chain, nft, chain.accounts[i], 30)
    token_mint(chain, token, chain.accounts[:4], [2**255, 10**40, 7, 1])
    token_transfers(chain, token, chain.accounts[0], chain.accounts[4:8], [2**250] * 4)
    schema = "ixe2e_" + uuid.uuid4().hex[:10]
    pg = "postgresql://postgres@127.0.0.1:5432/test"
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": f"{pg}?schema={schema}",
            "chains": [
                {
                    "name": "local",
                    "rpc": chain.node.url,
                    "finality_depth": 3,
                    "initial_range": 2,
                    "contracts": [
                        {"name": "nft", "address": nft.address, "abi": "erc721"},
                        {"name": "token", "address": token, "abi": "erc20"},
                    ],
                }
            ],
        },
    )
    try:
        service = index_once(config)
        chain.node.rpc("anvil_reorg", [2, []])
        index_once(config)
        store = Store.open(config.database)
        assert_exact(chain, store, nft.address, token)
        store.close()
        assert service.metrics is not None
        height = service.metrics.registry.get_sample_value(
            "opsledger_indexer_height", {"chain": "local"}
        )
        assert height is not None and height > 0
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_start_block_skips_earlier_events(chain: Chain, tmp_path: Path) -> None:
    nft = NftState(chain.deploy("nft"))
    nft_mint(chain, nft, chain.accounts[1], 5)
    start = chain.head() + 1
    nft_mint(chain, nft, chain.accounts[2], 3)
    contract = {"name": "nft", "address": nft.address, "abi": "erc721", "start_block": start}
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": "sqlite:///index.db",
            "chains": [
                {
                    "name": "local",
                    "rpc": chain.node.url,
                    "finality_depth": 1,
                    "contracts": [contract],
                }
            ],
        },
    )
    assert config.chains[0].start_block == start
    index_once(config)
    store = Store.open(config.database)
    rows = all_rows(store, "nft_transfer")
    assert [r["token_id"] for r in rows] == [6, 7, 8]
    assert all(r["block_number"] >= start for r in rows)
