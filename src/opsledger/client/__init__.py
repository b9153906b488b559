"""Clients of the ledger: the ``LedgerClient`` protocol, in-process and HTTP implementations.

Import ``LocalClient`` from ``opsledger.client.local`` and ``HttpClient`` from
``opsledger.client.http``: the services depend only on ``opsledger.client.base``.
"""

from opsledger.client.base import LedgerClient, Signer, TxFilter

__all__ = ["LedgerClient", "Signer", "TxFilter"]
