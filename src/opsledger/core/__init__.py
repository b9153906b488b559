"""The pure heart of opsledger: formats, hashing, signatures, Merkle proofs, verification.

Nothing here does I/O or imports a framework; the node, the store and the network call in.

Names load on first use (PEP 562 ``__getattr__``), except the error tree, which every
package raises or catches and which costs nothing to import. Why: every CLI command and
service imports ``opsledger.core`` for an error class or two, and importing every module
here eagerly pulled in Ed25519 (PyNaCl), JSON Schema compilation and the transaction
models (~40 ms of each ``opsledger`` start) for processes that never sign or verify,
such as ``opsledger index --once``. ``from opsledger.core import X`` works as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsledger.core.errors import (
    AlreadyRecorded,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    OpsledgerError,
    PermissionDenied,
    ProofError,
    ReplayRejected,
    SchemaError,
    StorageError,
    UnknownType,
    UpstreamError,
    VerificationFailed,
)
from opsledger.core.lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from opsledger.core.block import GENESIS_PREV_HASH, Block, BlockHeader, sign_block
    from opsledger.core.checkpoint import (
        Checkpoint,
        format_vkey,
        open_checkpoint,
        parse_checkpoint,
        parse_vkey,
        sign_checkpoint,
    )
    from opsledger.core.clock import Clock, FixedClock, SystemClock
    from opsledger.core.crypto import (
        PrivateKey,
        PublicKey,
        SignatureChecker,
        ThreadedSignatureChecker,
        key_id_of,
    )
    from opsledger.core.encoding import b64decode, b64encode, canonical, parse_json, sha256_hex
    from opsledger.core.identity import DEFAULT_ROLES, Registry
    from opsledger.core.merkle import (
        CompactRange,
        consistency_proof,
        inclusion_proof,
        leaf_hash,
        root_of,
        verify_consistency,
        verify_inclusion,
    )
    from opsledger.core.schemas import (
        envelope_schema,
        transaction_schema,
        transaction_types,
        validate_transaction,
    )
    from opsledger.core.tx import (
        Receipt,
        SignedTransaction,
        Subject,
        Transaction,
        format_ts,
        parse_subject,
        sign_transaction,
    )
    from opsledger.core.verify import (
        LedgerVerifier,
        VerifyResult,
        origin_for,
    )

# name -> the submodule that defines it (the error tree above is imported at once)
_EXPORTS = {
    "Block": "block",
    "BlockHeader": "block",
    "Checkpoint": "checkpoint",
    "Clock": "clock",
    "CompactRange": "merkle",
    "DEFAULT_ROLES": "identity",
    "FixedClock": "clock",
    "GENESIS_PREV_HASH": "block",
    "LedgerVerifier": "verify",
    "PrivateKey": "crypto",
    "PublicKey": "crypto",
    "Receipt": "tx",
    "Registry": "identity",
    "SignatureChecker": "crypto",
    "SignedTransaction": "tx",
    "Subject": "tx",
    "SystemClock": "clock",
    "ThreadedSignatureChecker": "crypto",
    "Transaction": "tx",
    "VerifyResult": "verify",
    "b64decode": "encoding",
    "b64encode": "encoding",
    "canonical": "encoding",
    "consistency_proof": "merkle",
    "envelope_schema": "schemas",
    "format_ts": "tx",
    "format_vkey": "checkpoint",
    "inclusion_proof": "merkle",
    "key_id_of": "crypto",
    "leaf_hash": "merkle",
    "open_checkpoint": "checkpoint",
    "origin_for": "verify",
    "parse_checkpoint": "checkpoint",
    "parse_json": "encoding",
    "parse_subject": "tx",
    "parse_vkey": "checkpoint",
    "root_of": "merkle",
    "sha256_hex": "encoding",
    "sign_block": "block",
    "sign_checkpoint": "checkpoint",
    "sign_transaction": "tx",
    "transaction_schema": "schemas",
    "transaction_types": "schemas",
    "validate_transaction": "schemas",
    "verify_consistency": "merkle",
    "verify_inclusion": "merkle",
}

__all__ = [
    "DEFAULT_ROLES",
    "GENESIS_PREV_HASH",
    "AlreadyRecorded",
    "Block",
    "BlockHeader",
    "Checkpoint",
    "Clock",
    "CompactRange",
    "ConfigError",
    "Conflict",
    "FixedClock",
    "InvalidInput",
    "LedgerVerifier",
    "NotFound",
    "OpsledgerError",
    "PermissionDenied",
    "PrivateKey",
    "ProofError",
    "PublicKey",
    "Receipt",
    "Registry",
    "ReplayRejected",
    "SchemaError",
    "SignatureChecker",
    "SignedTransaction",
    "StorageError",
    "Subject",
    "SystemClock",
    "ThreadedSignatureChecker",
    "Transaction",
    "UnknownType",
    "UpstreamError",
    "VerificationFailed",
    "VerifyResult",
    "b64decode",
    "b64encode",
    "canonical",
    "consistency_proof",
    "envelope_schema",
    "format_ts",
    "format_vkey",
    "inclusion_proof",
    "key_id_of",
    "leaf_hash",
    "open_checkpoint",
    "origin_for",
    "parse_checkpoint",
    "parse_json",
    "parse_subject",
    "parse_vkey",
    "root_of",
    "sha256_hex",
    "sign_block",
    "sign_checkpoint",
    "sign_transaction",
    "transaction_schema",
    "transaction_types",
    "validate_transaction",
    "verify_consistency",
    "verify_inclusion",
]


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
