# pragma version 0.4.3
# A factory: each child is a minimal proxy of a template that logs Pinged events.

event ChildCreated:
    child: indexed(address)
    serial: uint256

template: public(address)
serial: public(uint256)


@deploy
def __init__(template: address):
    self.template = template


@external
def create() -> address:
    child: address = create_minimal_proxy_to(self.template)
    self.serial += 1
    log ChildCreated(child=child, serial=self.serial)
    return child
