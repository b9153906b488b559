# pragma version ~=0.4.3
"""
@title Token
@notice A small ERC-20 token with an owner who mints: the contract under CI in the
        opsledger contract-ci example. Kept short on purpose; the pipeline around it is
        the point.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

name: public(String[32])
symbol: public(String[8])
decimals: public(uint8)
totalSupply: public(uint256)
owner: public(address)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])


@deploy
def __init__(_name: String[32], _symbol: String[8]):
    self.name = _name
    self.symbol = _symbol
    self.decimals = 18
    self.owner = msg.sender


@internal
def _transfer(_from: address, _to: address, _value: uint256):
    assert _to != empty(address), "Token: transfer to the zero address"
    assert self.balanceOf[_from] >= _value, "Token: balance too low"
    self.balanceOf[_from] -= _value
    self.balanceOf[_to] += _value
    log Transfer(sender=_from, receiver=_to, value=_value)


@external
def transfer(_to: address, _value: uint256) -> bool:
    self._transfer(msg.sender, _to, _value)
    return True


@external
def approve(_spender: address, _value: uint256) -> bool:
    self.allowance[msg.sender][_spender] = _value
    log Approval(owner=msg.sender, spender=_spender, value=_value)
    return True


@external
def transferFrom(_from: address, _to: address, _value: uint256) -> bool:
    assert self.allowance[_from][msg.sender] >= _value, "Token: allowance too low"
    self.allowance[_from][msg.sender] -= _value
    self._transfer(_from, _to, _value)
    return True


@external
def mint(_to: address, _value: uint256):
    assert msg.sender == self.owner, "Token: only the owner mints"
    assert _to != empty(address), "Token: mint to the zero address"
    self.totalSupply += _value
    self.balanceOf[_to] += _value
    log Transfer(sender=empty(address), receiver=_to, value=_value)


@external
def burn(_value: uint256):
    assert self.balanceOf[msg.sender] >= _value, "Token: balance too low"
    self.balanceOf[msg.sender] -= _value
    self.totalSupply -= _value
    log Transfer(sender=msg.sender, receiver=empty(address), value=_value)
