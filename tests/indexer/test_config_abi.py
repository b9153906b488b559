"""Config errors name the key and the reason; ABI presets, files and decoding."""

# ruff: noqa: E501 - the smallest config is quoted exactly as the issue writes it

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.core import ConfigError
from opsledger.indexer.abi import PRESETS, ContractEvents
from opsledger.indexer.config import load_file
from opsledger.indexer.schema import snake

SMALLEST = """\
indexer:
  database: "sqlite:///index.db"
  chains:
    - name: local
      rpc: "http://127.0.0.1:9001"
      finality_depth: 5
      contracts:
        - {name: nft, address: "0x5FbDB2315678afecb367f032d93F642f64180aa3", abi: erc721, start_block: 0}
"""


def test_the_smallest_config_as_written(tmp_path: Path) -> None:
    path = tmp_path / "indexer.yaml"
    path.write_text(SMALLEST)
    config = load_file(path)
    assert config.database == f"sqlite:///{tmp_path.resolve() / 'index.db'}"
    (chain,) = config.chains
    assert (chain.name, chain.rpc, chain.finality_depth) == ("local", "http://127.0.0.1:9001", 5)
    (nft,) = chain.contracts
    assert nft.address == "0x5fbdb2315678afecb367f032d93f642f64180aa3"
    spec = next(s for s in nft.events.specs if s.name == "nft_transfer")
    assert [c.name for c in spec.columns] == [
        "chain",
        "block_number",
        "block_hash",
        "tx_hash",
        "log_index",
        "address",
        "final",
        "from",
        "to",
        "token_id",
    ]
    assert config.digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (('database: "sqlite:///index.db"', "database: mysql://x"), "indexer.database", "sqlite"),
        (
            ("finality_depth: 5", "finality_depth: -1"),
            "indexer.chains[0].finality_depth",
            "integer",
        ),
        (
            ("finality_depth: 5", "finality_depth: 5\n      colour: red"),
            "indexer.chains[0].colour",
            "unknown key",
        ),
        (("abi: erc721", "abi: erc999"), "indexer.chains[0].contracts[0].abi", "preset"),
        (
            ("0x5FbDB2315678afecb367f032d93F642f64180aa3", "0x12"),
            "indexer.chains[0].contracts[0].address",
            "20-byte",
        ),
        (('rpc: "http://127.0.0.1:9001"', "rpc: ftp://x"), "indexer.chains[0].rpc", "http"),
        (("name: nft", "name: Nft"), "indexer.chains[0].contracts[0].name", "lower-case"),
        (
            ("start_block: 0}", "start_block: 0, events: [Mint]}"),
            "indexer.chains[0].contracts[0].events",
            "Mint",
        ),
    ],
)
def test_errors_name_the_key_and_reason(
    tmp_path: Path, edit: tuple[str, str], key: str, reason: str
) -> None:
    path = tmp_path / "indexer.yaml"
    path.write_text(SMALLEST.replace(*edit))
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert str(path) in caught.value.message
    assert key in caught.value.message
    assert reason in caught.value.message


def test_abi_file_and_factory(tmp_path: Path) -> None:
    abi = [
        {
            "type": "event",
            "name": "PoolCreated",
            "anonymous": False,
            "inputs": [
                {"name": "pool", "type": "address", "indexed": True},
                {"name": "fee", "type": "uint24", "indexed": False},
            ],
        },
    ]
    (tmp_path / "factory.json").write_text(json.dumps({"abi": abi}))
    path = tmp_path / "indexer.yaml"
    path.write_text(
        SMALLEST
        + '        - {name: factory, address: "0x'
        + "1" * 40
        + '", abi: factory.json}\n'
        + "        - {name: pool, abi: erc20,\n"
        + "           factory: {contract: factory, event: PoolCreated, arg: pool}}\n"
    )
    config = load_file(path)
    pool = config.chains[0].contracts[2]
    assert pool.factory is not None and pool.address is None
    path.write_text(path.read_text().replace("arg: pool", "arg: pair"))
    with pytest.raises(ConfigError, match=r"factory.arg"):
        load_file(path)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**256 - 1),
    st.integers(min_value=-(2**127), max_value=2**127 - 1),
    st.binary(max_size=70),
    st.lists(st.integers(min_value=0, max_value=2**256 - 1), max_size=5),
)
def test_decoding_round_trip(value: int, signed: int, blob: bytes, ids: list[int]) -> None:
    abi = [
        {
            "type": "event",
            "name": "Thing",
            "anonymous": False,
            "inputs": [
                {"name": "who", "type": "address", "indexed": True},
                {"name": "amountIn", "type": "uint256", "indexed": True},
                {"name": "delta", "type": "int128", "indexed": False},
                {"name": "payload", "type": "bytes", "indexed": False},
                {"name": "ids", "type": "uint256[]", "indexed": False},
            ],
        },
    ]
    events = ContractEvents("c", abi, None)
    (topic0,) = events.by_topic
    log = {
        "address": "0x" + "AB" * 20,
        "topics": [topic0, "0x" + "00" * 12 + "cd" * 20, "0x" + value.to_bytes(32, "big").hex()],
        "data": "0x" + encode(["int128", "bytes", "uint256[]"], [signed, blob, ids]).hex(),
        "blockNumber": "0x10",
        "blockHash": "0x" + "11" * 32,
        "transactionHash": "0x" + "22" * 32,
        "logIndex": "0x3",
    }
    decoded = events.decode(log, "c1")
    assert decoded is not None
    table, row = decoded
    assert table == "c_thing"
    assert row["who"] == "0x" + "cd" * 20 and row["amount_in"] == value and row["delta"] == signed
    assert row["payload"] == "0x" + blob.hex()
    assert json.loads(row["ids"]) == [str(i) for i in ids]
    assert (row["block_number"], row["log_index"], row["address"]) == (16, 3, "0x" + "ab" * 20)
    # A log of the same topic with the wrong shape is skipped, not misread.
    assert events.decode({**log, "topics": log["topics"][:2]}, "c1") is None


def test_presets_and_names() -> None:
    assert {"erc20", "erc721", "erc1155"} <= set(PRESETS)
    names = {s.name for s in ContractEvents("multi", PRESETS["erc1155"], None).specs}
    assert names == {
        "multi_transfer_single",
        "multi_transfer_batch",
        "multi_approval_for_all",
        "multi_uri",
    }
    assert snake("tokenId") == "token_id" and snake("_from") == "from" and snake("URI") == "uri"


def test_the_home_section_is_used_without_config(tmp_path: Path) -> None:
    from opsledger.app import Home
    from opsledger.app.indexer import load_indexer_config

    home = Home(tmp_path / "home")
    home.init(admin="alice")
    with pytest.raises(ConfigError, match="no indexer section"):
        load_indexer_config(None, home)
    with home.config_path.open("a") as out:
        out.write(SMALLEST)
    config = load_indexer_config(None, home)
    assert config.chains[0].name == "local"
    assert config.database == f"sqlite:///{(home.path / 'index.db').resolve()}"
    with pytest.raises(ConfigError, match="no such config file"):
        load_indexer_config(tmp_path / "missing.yaml", home)


def test_to_batch_rows_duplicates_and_finality(tmp_path: Path) -> None:
    """A range's logs become tuple rows in column order: duplicates (also out of order)
    dropped, other contracts' and unknown events' logs skipped, rows at or below
    finality marked final."""
    from opsledger.indexer.chain import ChainIndexer, RangeResult, table_specs
    from opsledger.indexer.storage import Store

    path = tmp_path / "indexer.yaml"
    path.write_text(SMALLEST)
    config = load_file(path)
    (chain,) = config.chains
    nft = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
    (transfer,) = [
        t for t, d in chain.contracts[0].events.by_topic.items() if d.table.endswith("transfer")
    ]

    def log(
        block: int, index: int, token: int, address: str = nft, topic0: str = transfer
    ) -> dict[str, Any]:
        return {
            "address": address.upper().replace("0X", "0x"),  # checksummed by some nodes
            "topics": [topic0, "0x" + "00" * 32, "0x" + "00" * 12 + "ab" * 20, f"0x{token:064x}"],
            "data": "0x",
            "blockNumber": hex(block),
            "blockHash": "0x" + f"{block:02x}" * 32,
            "transactionHash": "0x" + f"{index:02x}" * 32,
            "logIndex": hex(index),
            "removed": False,
        }

    logs = [
        log(10, 0, 1),
        log(10, 1, 2),
        log(12, 0, 3),
        log(10, 1, 2),  # a duplicate, out of order
        log(11, 4, 5),  # out of order, new
        log(12, 0, 3),  # a duplicate of the highest
        log(12, 1, 6, address="0x" + "99" * 20),  # another contract
        log(12, 2, 7, topic0="0x" + "77" * 32),  # an event not indexed
        {**log(12, 3, 8), "removed": True},
    ]
    store = Store.open("sqlite:///:memory:")
    store.ensure_tables(table_specs(config.chains))
    indexer = ChainIndexer(chain, store, None)  # type: ignore[arg-type]  # no RPC needed
    batch = indexer.to_batch(RangeResult(10, 12, logs, indexer.addresses()), head=16)
    rows = batch.tables["nft_transfer"]
    assert sorted((r[1], r[4], r[9]) for r in rows) == [
        (10, 0, 1),
        (10, 1, 2),
        (11, 4, 5),
        (12, 0, 3),
    ]
    assert all(r[0] == "local" and r[5] == nft and r[7] == "0x" + "00" * 20 for r in rows)
    assert {r[1]: r[6] for r in rows} == {10: True, 11: True, 12: False}  # final below 16 - 5
    assert batch.events == 4
    store.close()
