"""Content-addressed blobs: job logs and artifacts, stored by their SHA-256.

A blob's name is its digest (``<root>/sha256/<hex>``), so the ledger's ``log_digest`` or
artifact digest is also the way to find the bytes, a blob is written once however many
runs produce it, and a reader can always re-hash what it got. Writes go to a temporary
file in the same folder and are renamed into place, so a crash never leaves a blob whose
bytes do not match its name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from opsledger.core import NotFound

__all__ = ["BlobStore", "PipelineStores"]

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class BlobStore:
    """Blobs under ``root``; digests look like ``sha256:<64 hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        match = _DIGEST.match(digest)
        if match is None:
            raise NotFound(f"not a blob digest: {digest!r}")
        return self.root / "sha256" / match.group(1)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {digest} in {self.root}") from None

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if not target.is_file():
            self._write(target, lambda handle: handle.write(data))
        return digest

    def put_file(self, source: Path, digest: str | None = None) -> str:
        """Copy ``source`` in (hashing it unless ``digest`` is given and trusted)."""
        if digest is None:
            hasher = hashlib.sha256()
            with source.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(chunk)
            digest = "sha256:" + hasher.hexdigest()
        target = self.path(digest)
        if not target.is_file():
            with source.open("rb") as src:
                self._write(target, lambda handle: shutil.copyfileobj(src, handle))
        return digest

    def _write(self, target: Path, fill: object) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                fill(handle)  # type: ignore[operator]
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class PipelineStores:
    """The folders a runner keeps under ``<home>/pipelines``."""

    root: Path

    @property
    def logs(self) -> BlobStore:
        return BlobStore(self.root / "logs")

    @property
    def artifacts(self) -> BlobStore:
        return BlobStore(self.root / "artifacts")

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def work(self) -> Path:
        return self.root / "work"
