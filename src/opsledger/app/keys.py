"""Private key files: created with mode 0600, refused when others can read them.

A key file holds the base64 Ed25519 seed and nothing else. Keys never enter the ledger,
logs or error messages (``PrivateKey.__repr__`` shows only the key id). CI systems pass a
key as an environment variable instead: ``OPSLEDGER_KEY`` (base64 seed) or
``OPSLEDGER_KEY_FILE`` (a path), with ``OPSLEDGER_ACTOR`` naming the actor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from opsledger.core import ConfigError, InvalidInput, NotFound, PrivateKey

__all__ = ["key_path", "load_key", "load_key_from_env", "write_key"]


def key_path(keys_dir: Path, actor: str) -> Path:
    return keys_dir / f"{actor}.key"


def write_key(path: Path, key: PrivateKey, *, overwrite: bool = False) -> None:
    """Write atomically with mode 0600 from the first byte (never world-readable)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".key.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, flags, 0o600)
    try:
        os.write(fd, (key.to_b64() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.exists() and not overwrite:
        tmp.unlink()
        raise InvalidInput(f"key file {path} already exists")
    os.replace(tmp, path)


def load_key(path: Path) -> PrivateKey:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFound(f"no key file {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}; it must be 0600 (chmod 600)"
        )
    try:
        return PrivateKey.from_b64(path.read_text())
    except InvalidInput as exc:
        raise ConfigError(f"key file {path} does not hold a base64 Ed25519 seed") from exc


def load_key_from_env() -> PrivateKey | None:
    """``OPSLEDGER_KEY`` (base64 seed) or ``OPSLEDGER_KEY_FILE``; None when neither is set."""
    inline = os.environ.get("OPSLEDGER_KEY")
    if inline:
        try:
            return PrivateKey.from_b64(inline)
        except InvalidInput as exc:
            raise ConfigError("OPSLEDGER_KEY is not a base64 Ed25519 seed") from exc
    path = os.environ.get("OPSLEDGER_KEY_FILE")
    return load_key(Path(path)) if path else None
