"""The query API over an index the real indexer built from a real anvil chain.

Traffic (mints, moves, a burn, huge ERC-20 amounts) goes to the Vyper contracts, the
indexer backfills it (``--once``), and the API's answers are checked against the chain
itself: owners from ``ownerOf``, balances from ``balanceOf``, transfers from the node's
logs. The API is served over a real socket by ``serve_api``, as ``opsledger index`` would.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.indexer.api import serve_api
from opsledger.indexer.storage import Store
from opsledger.testing.anvil import free_port
from tests.indexer.chainkit import (
    TRANSFER,
    ZERO,
    Chain,
    NftState,
    balance_of,
    nft_burn,
    nft_mint,
    nft_moves,
    owner_of,
    token_mint,
)
from tests.indexer.conftest import index_once, write_config

pytestmark = [pytest.mark.anvil]


async def _pages(http: httpx.AsyncClient, table: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    for _ in range(100):
        query = {**params, "limit": 50, **({"after": after} if after else {})}
        reply = await http.get(f"/api/v1/tables/{table}", params=query)
        assert reply.status_code == 200, reply.text
        rows += reply.json()["rows"]
        after = reply.json()["next"]
        if after is None:
            return rows
    raise AssertionError("pagination did not end")


def test_api_answers_match_the_chain(chain: Chain, tmp_path: Path) -> None:
    rng = random.Random(11)
    nft = NftState(chain.deploy("nft"))
    token = chain.deploy("token")
    holders = chain.accounts[:4]
    for i in range(4):
        nft_mint(chain, nft, holders[i], 20)
        chain.node.mine(rng.randint(1, 3))
    nft_moves(chain, nft, rng, 30)
    nft_burn(chain, nft, 3)
    token_mint(chain, token, holders, [2**200 + i for i in range(4)])
    config = write_config(
        tmp_path / "indexer.yaml",
        {
            "database": f"sqlite:///{tmp_path / 'index.db'}",
            "chains": [
                {
                    "name": "local",
                    "rpc": chain.node.url,
                    "finality_depth": 5,
                    "contracts": [
                        {"name": "nft", "address": nft.address, "abi": "erc721"},
                        {"name": "token", "address": token, "abi": "erc20"},
                    ],
                }
            ],
        },
    )
    index_once(config)
    store = Store.open(f"sqlite:///{tmp_path / 'index.db'}")
    port = free_port()

    async def scenario() -> dict[str, Any]:
        started = asyncio.Event()
        server = asyncio.create_task(serve_api(store, f"127.0.0.1:{port}", started=started))
        await asyncio.wait_for(started.wait(), timeout=10)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as h:
                graphql = await h.post(
                    "/graphql",
                    json={"query": "{ token_balance(limit: 100) { rows { holder balance } } }"},
                )
                return {
                    "owners": await _pages(h, "nft_owner"),
                    "transfers": await _pages(h, "nft_transfer", order="desc"),
                    "to_first": await _pages(h, "nft_transfer", to=holders[0]),
                    "balances": graphql.json(),
                }
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    try:
        got = asyncio.run(scenario())
    finally:
        store.close()

    live = {t: o for t, o in nft.owners.items() if o != ZERO}
    assert {int(r["token_id"]): r["owner"] for r in got["owners"]} == live
    for token_id in rng.sample(sorted(live), 10):
        assert owner_of(chain, nft.address, token_id) == live[token_id]
    logs = chain.logs(nft.address, TRANSFER)
    want = sorted(((int(x["blockNumber"], 16), int(x["logIndex"], 16)) for x in logs), reverse=True)
    assert [(r["block_number"], r["log_index"]) for r in got["transfers"]] == want
    assert got["to_first"]
    assert all(r["to"] == holders[0] for r in got["to_first"])
    balances = {
        r["holder"]: int(r["balance"]) for r in got["balances"]["data"]["token_balance"]["rows"]
    }
    assert balances == {h: balance_of(chain, token, h) for h in holders}
