# pragma version 0.4.3
# The factory's child template: every call to ping logs an event from the child's address.

event Pinged:
    who: indexed(address)
    amount: uint256


@external
def ping(amount: uint256):
    log Pinged(who=msg.sender, amount=amount)
