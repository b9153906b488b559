"""Ed25519 keys, signatures with domain separation, and key identifiers.

We use PyNaCl (libsodium). Measured on this 2-core machine (``bench/ledger.py`` prints it
every run): PyNaCl verifies roughly 1.6x as many signatures per second as ``cryptography``
and, because cffi releases the GIL during the C call, two threads verify on both cores;
``cryptography``'s verify scales far less across threads. Signature verification is the
cost that bounds ingest and ``verify``, so the faster one wins.

Every signature covers ``domain || message``. The domain names what is signed
(``DOMAIN_TX``, ``DOMAIN_BLOCK``) so a signature made for one kind of object can never
be replayed as another. C2SP signed notes sign the note text as that spec says instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from opsledger.core.encoding import b64decode, b64encode, sha256
from opsledger.core.errors import InvalidInput

__all__ = [
    "DOMAIN_BLOCK",
    "DOMAIN_TX",
    "PrivateKey",
    "PublicKey",
    "SignatureChecker",
    "ThreadedSignatureChecker",
    "combine_verdicts",
    "key_id_of",
]

DOMAIN_TX = b"opsledger/tx/v1\n"
DOMAIN_BLOCK = b"opsledger/block/v1\n"

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


def key_id_of(raw_public_key: bytes) -> str:
    """A key's identifier: the first 16 bytes of SHA-256 of the raw key, in hex."""
    return sha256(raw_public_key)[:16].hex()


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes
    # libsodium's key object, built once: verification is the hot path of the ledger
    _verifier: Any = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_KEY_SIZE:
            raise InvalidInput("an Ed25519 public key is 32 bytes", field="public_key")
        object.__setattr__(self, "_verifier", nacl.signing.VerifyKey(self.raw))

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        return cls(b64decode(text, field="public_key"))

    @property
    def b64(self) -> str:
        return b64encode(self.raw)

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, domain: bytes, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is valid for ``domain || message``; never raises."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._verifier.verify(domain + message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            return False
        return True


class PrivateKey:
    """An Ed25519 signing key. Its ``repr`` never shows the key material."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise InvalidInput("an Ed25519 private key seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_b64(cls, text: str) -> PrivateKey:
        return cls(b64decode(text.strip(), field="private_key"))

    def to_b64(self) -> str:
        """The seed in base64, for key files only (mode 0600); never log it."""
        return b64encode(bytes(self._key))

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(bytes(self._key.verify_key))

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return bytes(self._key.sign(domain + message).signature)

    def __repr__(self) -> str:
        return f"PrivateKey(key_id={self.key_id})"


VerifyItem = tuple[PublicKey, bytes, bytes, bytes]


def _verify_each(items: Sequence[VerifyItem]) -> list[bool]:
    return [key.verify(domain, message, sig) for key, domain, message, sig in items]


class SignatureChecker:
    """Verifies many signatures at once; the default runs them one after another.

    ``ThreadedSignatureChecker`` spreads them over threads: libsodium's verify runs with
    the GIL released, so threads use every core without the cost of processes.
    """

    def verify_many(self, items: Sequence[VerifyItem]) -> list[bool]:
        """``items`` are (key, domain, message, signature); results in the same order."""
        return _verify_each(items)

    def start(self, items: Sequence[VerifyItem]) -> Future[list[bool]]:
        """Begin verifying ``items``; the future holds the results in the same order.

        This one verifies at once, on the caller's thread. A threaded checker returns
        while its workers verify, so the caller can parse the next items meanwhile."""
        future: Future[list[bool]] = Future()
        future.set_result(_verify_each(items))
        return future


def combine_verdicts(parts: Sequence[Future[list[bool]]]) -> Future[list[bool]]:
    """One future for the verdicts of ``parts``, in order, set when the last one is."""
    combined: Future[list[bool]] = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def settle(_: Future[list[bool]]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        try:
            combined.set_result([ok for part in parts for ok in part.result()])
        except BaseException as exc:  # a part that failed fails the whole
            combined.set_exception(exc)

    if not parts:
        combined.set_result([])
    for part in parts:
        part.add_done_callback(settle)
    return combined


class ThreadedSignatureChecker(SignatureChecker):
    def __init__(self, workers: int = 2, chunk: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sigverify")
        self._workers = workers
        self._chunk = chunk

    def verify_many(self, items: Sequence[VerifyItem]) -> list[bool]:
        if len(items) < 2 * self._chunk:  # the caller waits anyway: not worth a hand-off
            return _verify_each(items)
        size = max(self._chunk, -(-len(items) // (self._workers * 4)))
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        results: list[bool] = []
        for part in self._pool.map(_verify_each, parts):
            results.extend(part)
        return results

    def start(self, items: Sequence[VerifyItem]) -> Future[list[bool]]:
        """Chunks of up to ``chunk`` items are one job each, so a caller that pipelines
        small chunks keeps every thread busy and a large batch is shared out."""
        if len(items) <= self._chunk:
            return self._pool.submit(_verify_each, items)
        size = max(self._chunk // 2, -(-len(items) // self._workers))
        parts = [
            self._pool.submit(_verify_each, items[i : i + size]) for i in range(0, len(items), size)
        ]
        return combine_verdicts(parts)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
