"""The chain event indexer (issue 7).

``config`` (the ``indexer`` section) -> ``service`` runs per chain a ``follow.Follower``
that detects reorgs and drives ``backfill.Backfill`` (adaptive ``eth_getLogs`` ranges over
``rpc.RpcClient``), turning block ranges into rows with ``chain.ChainIndexer`` and ``abi``;
``storage.Store`` (SQLite or PostgreSQL, layout in ``schema``) commits rows, derived tables
and checkpoints together. The query API (``api``, ``rest``, ``graphql``) reads the same
store. It reaches the ledger only through ``client.base`` (``ledger`` records evidence).
"""

__all__: list[str] = []
