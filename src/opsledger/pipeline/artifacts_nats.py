"""Files moving between the runner and workers through the JetStream Object Store.

A job's inputs (the project snapshot, the artifacts of the jobs it needs) and its outputs
(its own artifacts) are files; a worker may be on another machine. Each file is stored
once, under its content digest (object ``sha256-<hex>``), so a project sent with every job
of a run is uploaded once, and a downloaded file is checked against the digest it was
asked by (a corrupted or substituted object is refused, never used).

A set of files travels as a *manifest*: a JSON object ``{relpath: "sha256:<hex>"}``,
itself stored by digest, so a job message names all of its inputs with one digest.
Relative paths are checked on the way in and on the way out: absolute paths, ``..`` and
empty parts are refused (a manifest from the queue must not write outside its directory).

The Object Store already chunks large objects and checks its own digest; ours is the
SHA-256 the ledger records, so artifacts on the ledger and in the store are one name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from opsledger.core import InvalidInput, NotFound

__all__ = [
    "DEFAULT_BUCKET",
    "ArtifactStore",
    "check_relpath",
    "collect_files",
    "file_digest",
]

DEFAULT_BUCKET = "opsledger-artifacts"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_relpath(relpath: str) -> str:
    """A safe relative POSIX path, or ``InvalidInput``."""
    pure = PurePosixPath(relpath)
    if (
        not relpath
        or "\0" in relpath
        or pure.is_absolute()
        or any(part in ("", "..") for part in pure.parts)
        or str(pure) != relpath.rstrip("/")
    ):
        raise InvalidInput(f"not a safe relative path: {relpath!r}", field="path")
    return str(pure)


def _object_name(digest: str) -> str:
    if not (digest.startswith("sha256:") and len(digest) == 71):
        raise InvalidInput(f"not a sha256 digest: {digest!r}", field="digest")
    hexpart = digest[7:]
    if any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidInput(f"not a sha256 digest: {digest!r}", field="digest")
    return "sha256-" + hexpart


class ArtifactStore:
    """Content-addressed files in one Object Store bucket (created when missing)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = DEFAULT_BUCKET) -> ArtifactStore:
        try:
            store = await js.object_store(bucket)
        except BucketNotFoundError:
            store = await js.create_object_store(bucket)
        return cls(store)

    async def has(self, digest: str) -> bool:
        try:
            await self._store.get_info(_object_name(digest))
        except ObjectNotFoundError:
            return False
        return True

    async def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not await self.has(digest):
            await self._store.put(_object_name(digest), data)
        return digest

    async def put_file(self, path: Path) -> str:
        """Store a file (skipped when its digest is already there); returns its digest."""
        digest = file_digest(path)
        if not await self.has(digest):
            with path.open("rb") as handle:
                await self._store.put(_object_name(digest), handle)
        return digest

    async def get_bytes(self, digest: str) -> bytes:
        try:
            result = await self._store.get(_object_name(digest))
        except ObjectNotFoundError:
            raise NotFound(f"no object {digest} in the artifact store") from None
        data = result.data or b""
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise InvalidInput(f"object {digest} does not match its digest", field="digest")
        return data

    async def get_file(self, digest: str, dest: Path) -> None:
        """Write the object to ``dest`` (atomically), checking its digest first."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                try:
                    await self._store.get(_object_name(digest), writeinto=handle)
                except ObjectNotFoundError:
                    raise NotFound(f"no object {digest} in the artifact store") from None
            if file_digest(Path(tmp)) != digest:
                raise InvalidInput(f"object {digest} does not match its digest", field="digest")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put_tree(self, files: Mapping[str, Path]) -> str:
        """Store every file and a manifest naming them; returns the manifest's digest."""
        manifest = {
            check_relpath(rel): await self.put_file(Path(src)) for rel, src in files.items()
        }
        return await self.put_bytes(json.dumps(manifest, sort_keys=True).encode())

    async def manifest(self, digest: str) -> dict[str, str]:
        try:
            data = json.loads(await self.get_bytes(digest))
        except ValueError:
            raise InvalidInput(f"manifest {digest} is not JSON", field="inputs") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise InvalidInput(f"manifest {digest} must map paths to digests", field="inputs")
        return {check_relpath(rel): d for rel, d in data.items()}

    async def get_tree(self, digest: str, dest: Path) -> dict[str, str]:
        """Materialise a manifest's files under ``dest``; returns the manifest."""
        manifest = await self.manifest(digest)
        for rel, file_dig in manifest.items():
            await self.get_file(file_dig, dest / rel)
        return manifest


def collect_files(
    root: Path, *, ignore_dirs: Iterable[str] = (), exclude: Iterable[Path] = ()
) -> dict[str, Path]:
    """``{relpath: path}`` of the regular files under ``root`` for ``put_tree``, skipping
    folders named in ``ignore_dirs`` and the ``exclude`` paths. Symlinks are not
    followed: a snapshot must not carry files from outside the project."""
    ignored = set(ignore_dirs)
    skip = {p.resolve() for p in exclude}
    base = root.resolve()
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(base):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in ignored and (here / d).resolve() not in skip)
        for name in sorted(names):
            path = here / name
            if path.is_file() and not path.is_symlink() and path.resolve() not in skip:
                files[path.relative_to(base).as_posix()] = path
    return files
