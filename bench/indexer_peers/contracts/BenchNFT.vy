# pragma version 0.4.3
"""A small ERC-721 for the indexer benchmark: Transfer/Approval events, batch mint."""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    token_id: indexed(uint256)

event Approval:
    owner: indexed(address)
    approved: indexed(address)
    token_id: indexed(uint256)

owner_of: HashMap[uint256, address]
balance_of: HashMap[address, uint256]
approved_for: HashMap[uint256, address]
next_id: public(uint256)


@external
@view
def ownerOf(token_id: uint256) -> address:
    holder: address = self.owner_of[token_id]
    assert holder != empty(address), "no such token"
    return holder


@external
@view
def balanceOf(holder: address) -> uint256:
    return self.balance_of[holder]


@external
def mint_many(receivers: DynArray[address, 64]):
    token_id: uint256 = self.next_id
    for receiver: address in receivers:
        self.owner_of[token_id] = receiver
        self.balance_of[receiver] += 1
        log Transfer(sender=empty(address), receiver=receiver, token_id=token_id)
        token_id += 1
    self.next_id = token_id


@external
def approve(approved: address, token_id: uint256):
    assert self.owner_of[token_id] == msg.sender, "not owner"
    self.approved_for[token_id] = approved
    log Approval(owner=msg.sender, approved=approved, token_id=token_id)


@external
def transferFrom(sender: address, receiver: address, token_id: uint256):
    assert self.owner_of[token_id] == sender, "wrong sender"
    assert msg.sender == sender or self.approved_for[token_id] == msg.sender, "not allowed"
    self.approved_for[token_id] = empty(address)
    self.owner_of[token_id] = receiver
    self.balance_of[sender] -= 1
    self.balance_of[receiver] += 1
    log Transfer(sender=sender, receiver=receiver, token_id=token_id)
