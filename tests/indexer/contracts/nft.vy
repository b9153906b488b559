# pragma version 0.4.3
# A minimal ERC-721 for the indexer tests: batch mints and moves so a test makes
# thousands of Transfer events in few transactions.

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    token_id: indexed(uint256)

ownerOf: public(HashMap[uint256, address])
balanceOf: public(HashMap[address, uint256])


@external
def mint_many(receiver: address, first: uint256, count: uint256):
    for i: uint256 in range(count, bound=500):
        token: uint256 = first + i
        assert self.ownerOf[token] == empty(address), "minted"
        self.ownerOf[token] = receiver
        log Transfer(sender=empty(address), receiver=receiver, token_id=token)
    self.balanceOf[receiver] += count


@external
def move_many(ids: DynArray[uint256, 500], receivers: DynArray[address, 500]):
    for i: uint256 in range(len(ids), bound=500):
        token: uint256 = ids[i]
        assert self.ownerOf[token] == msg.sender, "not owner"
        self.ownerOf[token] = receivers[i]
        self.balanceOf[msg.sender] -= 1
        self.balanceOf[receivers[i]] += 1
        log Transfer(sender=msg.sender, receiver=receivers[i], token_id=token)


@external
def burn(token: uint256):
    assert self.ownerOf[token] == msg.sender, "not owner"
    self.ownerOf[token] = empty(address)
    self.balanceOf[msg.sender] -= 1
    log Transfer(sender=msg.sender, receiver=empty(address), token_id=token)
