# pragma version 0.4.3
# A minimal ERC-20 for the indexer tests, with batch mints and transfers.

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    amount: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    amount: uint256

balanceOf: public(HashMap[address, uint256])
totalSupply: public(uint256)


@external
def mint_many(receivers: DynArray[address, 500], amounts: DynArray[uint256, 500]):
    for i: uint256 in range(len(receivers), bound=500):
        self.balanceOf[receivers[i]] += amounts[i]
        self.totalSupply += amounts[i]
        log Transfer(sender=empty(address), receiver=receivers[i], amount=amounts[i])


@external
def transfer_many(receivers: DynArray[address, 500], amounts: DynArray[uint256, 500]):
    for i: uint256 in range(len(receivers), bound=500):
        self.balanceOf[msg.sender] -= amounts[i]
        self.balanceOf[receivers[i]] += amounts[i]
        log Transfer(sender=msg.sender, receiver=receivers[i], amount=amounts[i])


@external
def approve(spender: address, amount: uint256) -> bool:
    log Approval(owner=msg.sender, spender=spender, amount=amount)
    return True
