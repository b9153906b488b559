"""Submit one signed transaction, re-signing once after a nonce collision.

Nonces are microseconds chosen by the signer without asking the node, so two processes
signing for one actor can collide; the node then refuses the later one as a replay.
Re-signing the same content with a nonce past the actor's last accepted one (asked from
the ledger) is safe, since it is a new transaction, and needed only once.
"""

from __future__ import annotations

from opsledger.client.base import LedgerClient, Signer
from opsledger.core import Receipt, ReplayRejected, SignedTransaction

__all__ = ["submit_signed"]


def submit_signed(client: LedgerClient, signer: Signer, stx: SignedTransaction) -> Receipt:
    try:
        return client.submit(stx)
    except ReplayRejected:
        last = client.actor(signer.actor).get("last_nonce")
        signer.bump_past(max(stx.tx.nonce, last if isinstance(last, int) else 0))
        tx = stx.tx
        return client.submit(signer.sign(tx.type, tx.subject, tx.body, tx.refs))
