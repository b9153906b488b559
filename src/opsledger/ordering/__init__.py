"""Ordering: in-process for the embedded mode; a NATS JetStream cluster later."""

from opsledger.ordering.base import Deliver, Orderer, Pending
from opsledger.ordering.inprocess import InProcessOrderer

__all__ = ["Deliver", "InProcessOrderer", "Orderer", "Pending"]
