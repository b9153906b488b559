"""Import and fork: new homes built from verified blocks.

Both build the new home in a hidden staging directory next to the destination, verify
every block before it is written, and rename the directory into place only after the
last block verified (and, for a bundle, matched its header). A refused bundle therefore
leaves nothing behind, and a home that exists is always complete. The new home's store
is always the default SQLite file inside it (``store`` unset in its config), so the copy
never points back at the original's database.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opsledger.app.bundle import (
    BundleReader,
    Progress,
    RawBlock,
    VerifiedCopy,
    check_header,
    signature_checker,
)
from opsledger.app.config import Config, write_config
from opsledger.app.home import Home
from opsledger.core import (
    InvalidInput,
    LedgerVerifier,
    NotFound,
    PrivateKey,
    SignatureChecker,
    VerificationFailed,
    VerifyResult,
    origin_for,
)
from opsledger.ledger import iter_store_blocks
from opsledger.store import open_store

__all__ = ["fork_home", "import_bundle"]


# -- building a home from verified blocks ---------------------------------------------


def _refuse_existing(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(
            f"{dest} already exists and is not empty; give a new directory", field="home"
        )


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A hidden directory beside ``dest`` that becomes ``dest`` only if the block exits
    cleanly; on any error it is removed, with any parent directories it had to create."""
    created: list[Path] = []
    parent = dest.absolute().parent
    for ancestor in [parent, *parent.parents][::-1]:
        if not ancestor.exists():
            ancestor.mkdir(mode=0o700)
            created.append(ancestor)
    staging = parent / f".{dest.name}.staging-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        yield staging
        _refuse_existing(dest)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def import_bundle(
    path: Path,
    dest: Path,
    *,
    genesis_hash: str | None = None,
    node_key: PrivateKey | None = None,
    checker: SignatureChecker | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Create a new home at ``dest`` holding the bundle's ledger, verified block by
    block. Without ``node_key`` the home can be read and verified but not written."""
    _refuse_existing(dest)
    with (
        BundleReader(path) as reader,
        signature_checker(checker) as sig_checker,
        _staging(dest) as staging,
    ):
        header = reader.header
        verifier = LedgerVerifier(
            genesis_hash=genesis_hash,
            checker=sig_checker,
            fork_origin=header.fork_origin,
            fork_height=header.fork_height,
        )
        store = open_store(str(staging / "ledger.db"))
        try:
            copy = VerifiedCopy(store, verifier)
            for raw in reader.blocks():
                copy.add(raw)
                if progress is not None:
                    progress(raw.height, header.height)
            result = check_header(header, verifier)
            copy.finish()
            meta = {
                "genesis_hash": result.genesis_hash,
                "origin": result.origin,
                "node_name": header.node,
            }
            if header.fork_origin is not None:
                meta["fork_origin"] = header.fork_origin
                meta["fork_height"] = str(header.fork_height)
            for key, value in meta.items():
                store.set_meta(key, value)
        finally:
            store.close()
        if node_key is not None:
            state = verifier.registry.actors[header.node].keys.get(node_key.key_id)
            if state is None or not state.active:
                raise InvalidInput(
                    f"the node key given is not an active key of node "
                    f"{header.node!r} in this ledger",
                    field="node-key",
                )
            Home(staging).write_key(header.node, node_key)
        admin = copy.admin or "admin"
        write_config(
            staging / "opsledger.yaml",
            Config(store=None, node=header.node, admin=admin),
        )
    return {
        "home": str(dest),
        **_summary(result),
        "node": header.node,
        "admin": admin,
        "writable": node_key is not None,
    }


def _summary(result: VerifyResult) -> dict[str, Any]:
    return {
        "genesis_hash": result.genesis_hash,
        "origin": result.origin,
        "height": result.height,
        "log_size": result.log_size,
        "log_root": result.log_root,
        "transactions": result.transactions,
    }


def fork_home(
    source: Home,
    dest: Path,
    *,
    at: int,
    checker: SignatureChecker | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A new home at ``dest`` with ``source``'s ledger up to height ``at``, verified, for
    test environments: same admin and node keys, checkpoints of new blocks signed under
    a fork origin (``<origin>/fork/<8 hex>``) so they can never pass for the original's."""
    config = source.config()
    _refuse_existing(dest)
    admin_key = source.load_key(config.admin)
    node_key = source.load_key(config.node)
    with source.open_store(config) as src, signature_checker(checker) as sig_checker:
        meta = {
            key: src.get_meta(key)
            for key in ("genesis_hash", "origin", "node_name", "fork_origin", "fork_height")
        }
        head = src.head()
        genesis, origin, node_name = meta["genesis_hash"], meta["origin"], meta["node_name"]
        if head is None or genesis is None or origin is None or node_name is None:
            raise NotFound(f"no ledger in {source.path}: run `opsledger init` first")
        if not 0 <= at <= head.height:
            raise InvalidInput(
                f"--at must be between 0 and the head height {head.height}", field="at"
            )
        src_fork_height = int(meta["fork_height"]) if meta["fork_height"] is not None else None
        if src_fork_height is not None and at > src_fork_height:
            raise InvalidInput(
                f"{source.path} is itself a fork (at height {src_fork_height});"
                " fork it at or below that height",
                field="at",
            )
        verifier = LedgerVerifier(
            genesis_hash=genesis,
            checker=sig_checker,
            fork_origin=meta["fork_origin"],
            fork_height=src_fork_height,
        )
        with _staging(dest) as staging:
            store = open_store(str(staging / "ledger.db"))
            try:
                copy = VerifiedCopy(store, verifier)
                for block, records in iter_store_blocks(src, 0, at + 1):
                    copy.add(RawBlock.from_records(block, records))
                    if progress is not None:
                        progress(block.height, at)
                result = verifier.result()
                copy.finish()
                if origin != origin_for(result.genesis_hash):
                    raise VerificationFailed(
                        "the store's origin does not match its genesis",
                        height=0,
                        reason="origin mismatch",
                    )
                fork_origin = f"{origin}/fork/{secrets.token_hex(4)}"
                for key, value in {
                    "genesis_hash": genesis,
                    "origin": origin,
                    "node_name": node_name,
                    "fork_origin": fork_origin,
                    "fork_height": str(at),
                }.items():
                    store.set_meta(key, value)
            finally:
                store.close()
            new_home = Home(staging)
            new_home.write_key(config.admin, admin_key)
            new_home.write_key(config.node, node_key)
            write_config(
                staging / "opsledger.yaml",
                Config(store=None, node=config.node, admin=config.admin),
            )
    return {"home": str(dest), **_summary(result), "fork_origin": fork_origin, "fork_height": at}
