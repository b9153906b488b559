"""The chain event indexer (issue 7).

It reaches the ledger only through ``client.base.LedgerClient``.
"""

__all__: list[str] = []
