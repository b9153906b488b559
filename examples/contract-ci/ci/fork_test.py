"""Fork test: run the token against a fork of a node where it is already deployed.

    python ci/fork_test.py                                  # self-contained (two anvils)
    python ci/fork_test.py --upstream URL --address 0x..   # fork a node you name

Without ``--upstream`` the script plays both sides on 127.0.0.1: it starts an "upstream"
anvil, deploys the token there and mints to a holder (the state a real network would
have), then starts a second anvil with ``--fork-url <upstream>``. On the fork it checks the
deployed code and balances are those of the upstream, impersonates the holder
(``anvil_impersonateAccount``: no key needed, as when forking mainnet), moves tokens, and
checks the upstream did not change. Exit 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from chain import connect, deploy, die, load_artifact, node
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract

UNIT = 10**18


class Checks:
    """Prints each check; remembers whether any failed."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}{f': {detail}' if detail else ''}")
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)


@contextlib.contextmanager
def upstream(
    url: str | None, address: str | None
) -> Iterator[tuple[str, ChecksumAddress, ChecksumAddress]]:
    """(upstream url, token address, holder): the given node, or a fresh one we seed."""
    if url and address:
        w3 = connect(url)
        yield url, Web3.to_checksum_address(address), list(w3.eth.accounts)[1]
        return
    if url or address:
        die("--upstream and --address go together")
    with node() as fresh:
        w3 = connect(fresh)
        owner, holder = list(w3.eth.accounts)[:2]
        token = deploy(w3, load_artifact(), sender=owner)
        tx = token.functions.mint(holder, 50 * UNIT).transact({"from": owner})
        w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        print(f"upstream {fresh}: token at {token.address}, 50 LGT minted to {holder}")
        yield fresh, token.address, holder


def run(upstream_url: str, address: ChecksumAddress, holder: ChecksumAddress) -> Checks:
    checks = Checks()
    abi = load_artifact().abi
    up = connect(upstream_url)
    up_token: Contract = up.eth.contract(address=address, abi=abi)
    up_balance = up_token.functions.balanceOf(holder).call()
    up_block = up.eth.block_number
    receiver = Web3.to_checksum_address("0x" + "ab" * 20)

    with node(fork_url=upstream_url) as fork_url:
        fork = connect(fork_url)
        token: Contract = fork.eth.contract(address=address, abi=abi)
        checks.check(
            "fork starts at the upstream head",
            fork.eth.block_number >= up_block,
            f"fork block {fork.eth.block_number}, upstream {up_block}",
        )
        code_same = fork.eth.get_code(address) == up.eth.get_code(address)
        checks.check(
            "deployed code is read from the upstream",
            code_same and len(fork.eth.get_code(address)) > 0,
        )
        fork_balance = token.functions.balanceOf(holder).call()
        checks.check(
            "holder balance is the upstream's", fork_balance == up_balance, str(fork_balance)
        )

        fork.provider.make_request("anvil_impersonateAccount", [holder])  # type: ignore[arg-type]
        amount = min(UNIT, fork_balance)
        tx = token.functions.transfer(receiver, amount).transact({"from": holder})
        receipt = fork.eth.wait_for_transaction_receipt(tx, timeout=30)
        checks.check("transfer on the fork succeeds", receipt["status"] == 1)
        checks.check(
            "fork state moved",
            token.functions.balanceOf(receiver).call() == amount
            and token.functions.balanceOf(holder).call() == fork_balance - amount,
        )

    checks.check(
        "upstream is untouched",
        up_token.functions.balanceOf(holder).call() == up_balance
        and up_token.functions.balanceOf(receiver).call() == 0,
    )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", help="JSON-RPC URL of the node to fork")
    parser.add_argument("--address", help="the token's address on that node")
    args = parser.parse_args(argv)
    with upstream(args.upstream, args.address) as (url, address, holder):
        checks = run(url, address, holder)
    # A pytest-shaped summary: the pipeline's `counts` parser records it as test evidence.
    print(f"fork test: {checks.passed} passed, {len(checks.failed)} failed")
    if checks.failed:
        print(f"fork test failed: {'; '.join(checks.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
