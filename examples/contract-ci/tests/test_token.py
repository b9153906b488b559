"""Unit tests for contracts/Token.vy, run against a real EVM (anvil) through web3.py."""

from __future__ import annotations

import pytest
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError

UNIT = 10**18


def send(w3: Web3, call: object, sender: str) -> dict[str, object]:
    tx_hash = call.transact({"from": sender})  # type: ignore[attr-defined]
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    return dict(receipt)


def test_metadata(token: Contract, accounts: list[str]) -> None:
    assert token.functions.name().call() == "Ledger Token"
    assert token.functions.symbol().call() == "LGT"
    assert token.functions.decimals().call() == 18
    assert token.functions.owner().call() == accounts[0]
    assert token.functions.totalSupply().call() == 0


def test_owner_mints(w3: Web3, token: Contract, accounts: list[str]) -> None:
    owner, alice = accounts[0], accounts[1]
    receipt = send(w3, token.functions.mint(alice, 5 * UNIT), owner)
    assert token.functions.balanceOf(alice).call() == 5 * UNIT
    assert token.functions.totalSupply().call() == 5 * UNIT
    (event,) = token.events.Transfer().process_receipt(receipt)
    assert event["args"]["sender"] == "0x" + "00" * 20
    assert event["args"]["receiver"] == alice


def test_only_owner_mints(token: Contract, accounts: list[str]) -> None:
    with pytest.raises(ContractLogicError, match="only the owner mints"):
        token.functions.mint(accounts[1], UNIT).call({"from": accounts[1]})


def test_transfer_moves_balance(w3: Web3, token: Contract, accounts: list[str]) -> None:
    owner, alice, bob = accounts[0], accounts[1], accounts[2]
    send(w3, token.functions.mint(alice, 3 * UNIT), owner)
    receipt = send(w3, token.functions.transfer(bob, UNIT), alice)
    assert token.functions.balanceOf(alice).call() == 2 * UNIT
    assert token.functions.balanceOf(bob).call() == UNIT
    (event,) = token.events.Transfer().process_receipt(receipt)
    assert (event["args"]["sender"], event["args"]["value"]) == (alice, UNIT)


def test_transfer_over_balance_reverts(token: Contract, accounts: list[str]) -> None:
    with pytest.raises(ContractLogicError, match="balance too low"):
        token.functions.transfer(accounts[2], 1).call({"from": accounts[1]})


def test_transfer_to_zero_address_reverts(w3: Web3, token: Contract, accounts: list[str]) -> None:
    send(w3, token.functions.mint(accounts[1], UNIT), accounts[0])
    zero = "0x" + "00" * 20
    with pytest.raises(ContractLogicError, match="zero address"):
        token.functions.transfer(zero, 1).call({"from": accounts[1]})


def test_approve_then_transfer_from(w3: Web3, token: Contract, accounts: list[str]) -> None:
    owner, alice, spender, bob = accounts[0], accounts[1], accounts[2], accounts[3]
    send(w3, token.functions.mint(alice, 4 * UNIT), owner)
    send(w3, token.functions.approve(spender, 3 * UNIT), alice)
    assert token.functions.allowance(alice, spender).call() == 3 * UNIT
    send(w3, token.functions.transferFrom(alice, bob, 2 * UNIT), spender)
    assert token.functions.allowance(alice, spender).call() == UNIT
    assert token.functions.balanceOf(bob).call() == 2 * UNIT
    with pytest.raises(ContractLogicError, match="allowance too low"):
        token.functions.transferFrom(alice, bob, 2 * UNIT).call({"from": spender})


def test_burn_reduces_supply(w3: Web3, token: Contract, accounts: list[str]) -> None:
    send(w3, token.functions.mint(accounts[1], 2 * UNIT), accounts[0])
    send(w3, token.functions.burn(UNIT), accounts[1])
    assert token.functions.balanceOf(accounts[1]).call() == UNIT
    assert token.functions.totalSupply().call() == UNIT
    with pytest.raises(ContractLogicError, match="balance too low"):
        token.functions.burn(2 * UNIT).call({"from": accounts[1]})
