"""The pure heart of opsledger: formats, hashing, signatures, Merkle proofs, verification.

Nothing here does I/O or imports a framework; the node, the store and the network call in.
"""

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
