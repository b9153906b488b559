"""Fixtures for the token's unit tests: one fresh anvil per session (or the node at
``$CONTRACT_CI_RPC_URL``), one freshly deployed token per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chain import Artifact, connect, deploy, env_url, load_artifact, node
from web3 import Web3
from web3.contract import Contract


@pytest.fixture(scope="session")
def w3() -> Iterator[Web3]:
    with node(env_url("CONTRACT_CI_RPC_URL")) as url:
        yield connect(url)


@pytest.fixture(scope="session")
def artifact() -> Artifact:
    return load_artifact()


@pytest.fixture
def token(w3: Web3, artifact: Artifact) -> Contract:
    return deploy(w3, artifact)


@pytest.fixture
def accounts(w3: Web3) -> list[str]:
    """The node's unlocked accounts: [0] deploys and owns the token."""
    return list(w3.eth.accounts)
