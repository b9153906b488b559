"""C2SP tlog-checkpoint signed notes (https://c2sp.org/tlog-checkpoint, /signed-note).

A checkpoint note is, byte for byte::

    <origin>\\n
    <tree size, decimal>\\n
    <root hash, standard base64>\\n
    \\n
    — <signer name> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>\\n
    ...one signature line per signer

The signature covers the note text (the first three lines, each with its newline), as
the signed-note spec says: no extra domain prefix, because the text format itself (the
origin line) separates domains. The key hash is the first four bytes of
``SHA-256(name || 0x0A || 0x01 || public key)``, where 0x01 names Ed25519.
Verifier keys are written ``<name>+<key hash hex>+<base64(0x01 || public key)>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opsledger.core.crypto import PrivateKey, PublicKey
from opsledger.core.encoding import b64decode, b64encode, sha256
from opsledger.core.errors import InvalidInput, VerificationFailed

__all__ = [
    "Checkpoint",
    "NoteSignature",
    "add_signature",
    "format_vkey",
    "note_key_hash",
    "open_checkpoint",
    "parse_checkpoint",
    "parse_vkey",
    "sign_checkpoint",
]

EM_DASH = "\u2014"
ED25519_ALG = b"\x01"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise InvalidInput("checkpoint origin must be one non-empty line")
        lines = [self.origin, str(self.size), b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{EM_DASH} {self.name} {b64encode(self.key_hash + self.signature)}\n"


def note_key_hash(name: str, public_key: PublicKey) -> bytes:
    return sha256(name.encode() + b"\n" + ED25519_ALG + public_key.raw)[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise InvalidInput(f"signer name {name!r} must be non-empty without spaces or '+'")


def sign_checkpoint(checkpoint: Checkpoint, name: str, key: PrivateKey) -> str:
    """The signed note text for ``checkpoint`` with one signature."""
    text = checkpoint.text()
    return text + "\n" + _signature(text, name, key).line()


def _signature(text: str, name: str, key: PrivateKey) -> NoteSignature:
    _check_name(name)
    return NoteSignature(name, note_key_hash(name, key.public_key), key.sign(b"", text.encode()))


def add_signature(note: str, name: str, key: PrivateKey) -> str:
    """Cosign: append another signer's line to an existing note."""
    text, _ = _split(note)
    return note + _signature(text, name, key).line()


def _split(note: str) -> tuple[str, list[NoteSignature]]:
    text, sep, sigblock = note.partition("\n\n")
    if not sep or not sigblock.endswith("\n"):
        raise InvalidInput("malformed signed note: no blank line before the signatures")
    text += "\n"
    signatures = []
    for line in sigblock[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise InvalidInput(f"malformed signature line {line!r}")
        blob = b64decode(parts[2], field="signature")
        if len(blob) < 5:
            raise InvalidInput("signature line is too short")
        signatures.append(NoteSignature(parts[1], blob[:4], blob[4:]))
    if not signatures:
        raise InvalidInput("signed note carries no signature")
    return text, signatures


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[NoteSignature]]:
    """Parse a signed checkpoint note without checking signatures."""
    checkpoint, signatures, _ = _parse(note)
    return checkpoint, signatures


def _parse(note: str) -> tuple[Checkpoint, list[NoteSignature], str]:
    text, signatures = _split(note)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise InvalidInput("checkpoint text needs origin, size and root lines")
    origin, size_text, root_text, *extensions = lines
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise InvalidInput(f"checkpoint size {size_text!r} is not a decimal number")
    root = b64decode(root_text, field="root")
    if len(root) != 32:
        raise InvalidInput("checkpoint root must be 32 bytes")
    checkpoint = Checkpoint(origin, int(size_text), root, tuple(extensions))
    if checkpoint.text() != text:
        raise InvalidInput("checkpoint text is not in its canonical form")
    return checkpoint, signatures, text


def open_checkpoint(
    note: str,
    trusted: Mapping[str, PublicKey] | Iterable[tuple[str, PublicKey]],
    *,
    origin: str | None = None,
) -> Checkpoint:
    """Parse and verify a checkpoint: at least one signature by a trusted signer must be
    valid and every signature claiming a trusted name and key hash must be valid.
    Signatures by unknown signers are ignored, as the signed-note spec requires."""
    checkpoint, signatures, text_str = _parse(note)
    keys = dict(trusted.items() if isinstance(trusted, Mapping) else trusted)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationFailed(
            "checkpoint is for another log", expected=origin, computed=checkpoint.origin
        )
    text = text_str.encode()  # signatures cover the exact text received
    good = 0
    for sig in signatures:
        key = keys.get(sig.name)
        if key is None or note_key_hash(sig.name, key) != sig.key_hash:
            continue
        if not key.verify(b"", text, sig.signature):
            raise VerificationFailed(f"checkpoint signature by {sig.name} does not verify")
        good += 1
    if not good:
        raise VerificationFailed("checkpoint carries no signature by a trusted key")
    return checkpoint


def format_vkey(name: str, public_key: PublicKey) -> str:
    _check_name(name)
    return (
        f"{name}+{note_key_hash(name, public_key).hex()}+{b64encode(ED25519_ALG + public_key.raw)}"
    )


def parse_vkey(vkey: str) -> tuple[str, PublicKey]:
    name, _, rest = vkey.partition("+")
    hash_hex, _, key_b64 = rest.partition("+")
    blob = b64decode(key_b64, field="vkey")
    if not blob.startswith(ED25519_ALG) or len(blob) != 33:
        raise InvalidInput("verifier key is not an Ed25519 signed-note key")
    key = PublicKey(blob[1:])
    if note_key_hash(name, key).hex() != hash_hex:
        raise InvalidInput("verifier key hash does not match its name and key")
    return name, key
