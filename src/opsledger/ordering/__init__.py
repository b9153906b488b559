"""Ordering: in-process for the embedded mode; a NATS JetStream cluster later."""

from opsledger.ordering.base import Deliver, Orderer, Pending, PendingGroup
from opsledger.ordering.inprocess import InProcessOrderer

__all__ = ["Deliver", "InProcessOrderer", "Orderer", "Pending", "PendingGroup"]
