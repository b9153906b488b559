"""The JSON-RPC gateway in front of blockchain nodes (issue 5).

It reaches the ledger only through ``client.base.LedgerClient``.
"""

__all__: list[str] = []
