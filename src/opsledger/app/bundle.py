"""Bundles: a whole ledger in one file, verifiable offline, and the verification
drivers behind ``opsledger verify`` (import and fork live in ``snapshot``).

Bundle format ``opsledger-bundle/v1``: JSON lines, UTF-8, gzip-compressed when the file
name ends in ``.gz``. The first line is a header::

    {"format": "opsledger-bundle/v1", "origin": "opsledger/<32 hex>",
     "genesis_hash": "<64 hex>", "height": H, "log_size": S, "log_root": "<64 hex>",
     "node": "<node name>", "fork_origin": "...", "fork_height": F}

(``fork_origin``/``fork_height`` only for a forked ledger), then one line per block,
heights 0..H in order::

    {"height": h, "block": "<base64 canonical signed block bytes>",
     "checkpoint": "<the block's C2SP signed note, verbatim>",
     "leaves": ["<base64 canonical signed transaction bytes>", ...]}

Why it looks like this:

* **Everything is the stored bytes.** Blocks and leaves are carried as the exact canonical
  bytes that were hashed and signed, so verifying a bundle is the same computation as
  verifying a store (``core.verify.LedgerVerifier``); nothing is re-encoded on the way.
* **One block per line** streams both ways: export walks the store with iterators and
  import/verify hold one block at a time, so a ledger of 10^6 transactions needs memory
  for its largest block, not for all of them.
* **The header is a claim, not a trust anchor.** It is unsigned; every field is checked
  against what the blocks prove (a truncated or extended bundle fails). The trust anchor
  is the genesis hash an auditor pins with ``--genesis``; without it the bundle's own
  first block is trusted, which proves integrity but not which ledger this is.
* **Strict bytes.** The bundle's base64 must be canonical, and blocks and checkpoint
  notes must be in their one canonical form (the core verifier refuses any other), so a
  changed byte anywhere is refused, even one that means the same (whitespace in a block,
  a base64 character differing only in unused padding bits).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import secrets
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsledger.contracts import ContractBook
from opsledger.core import (
    Block,
    CompactRange,
    InvalidInput,
    LedgerVerifier,
    NotFound,
    OpsledgerError,
    SignatureChecker,
    SignedTransaction,
    ThreadedSignatureChecker,
    VerificationFailed,
    VerifyResult,
    b64decode,
    b64encode,
)
from opsledger.ledger import (
    StoreEvidence,
    check_deployments,
    iter_store_blocks,
    verify_contracts,
    verify_store,
)
from opsledger.ledger.sigpool import ProcessSignatureChecker
from opsledger.store import BlockRecord, LedgerStore, TxRecord, open_store

__all__ = [
    "FORMAT",
    "BundleHeader",
    "BundleReader",
    "Progress",
    "RawBlock",
    "VerifiedCopy",
    "export_bundle",
    "verify_bundle",
    "verify_home_store",
]

FORMAT = "opsledger-bundle/v1"
NODE_ROLE = "node"

Progress = Callable[[int, int], None]
"""``progress(height, last_height)`` after each block."""

_HEX = frozenset("0123456789abcdef")
_BLOCK_KEYS = frozenset({"height", "block", "checkpoint", "leaves"})


def _fail(height: int, reason: str, **details: Any) -> VerificationFailed:
    """Same message shape as ``core.verify``: ``block H: reason``."""
    return VerificationFailed(f"block {height}: {reason}", height=height, reason=reason, **details)


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class BundleHeader:
    origin: str
    genesis_hash: str
    height: int
    log_size: int
    log_root: str
    node: str
    fork_origin: str | None = None
    fork_height: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "origin": self.origin,
            "genesis_hash": self.genesis_hash,
            "height": self.height,
            "log_size": self.log_size,
            "log_root": self.log_root,
            "node": self.node,
        }
        if self.fork_origin is not None:
            data["fork_origin"] = self.fork_origin
            data["fork_height"] = self.fork_height
        return data

    @classmethod
    def from_dict(cls, data: Any) -> BundleHeader:
        def bad(why: str) -> VerificationFailed:
            return VerificationFailed(f"bundle header is malformed: {why}", reason=why)

        if not isinstance(data, dict):
            raise bad("the first line is not a JSON object")
        if data.get("format") != FORMAT:
            raise bad(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        for name in ("origin", "node"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise bad(f"{name} must be a non-empty string")
        for name in ("genesis_hash", "log_root"):
            if not _is_hex64(data.get(name)):
                raise bad(f"{name} must be 64 lower-case hex digits")
        for name in ("height", "log_size"):
            if not _is_count(data.get(name)):
                raise bad(f"{name} must be a non-negative integer")
        fork_origin, fork_height = data.get("fork_origin"), data.get("fork_height")
        if (fork_origin is None) != (fork_height is None):
            raise bad("fork_origin and fork_height go together")
        if fork_origin is not None and (
            not isinstance(fork_origin, str) or not _is_count(fork_height)
        ):
            raise bad("fork_origin must be a string and fork_height a non-negative integer")
        return cls(
            origin=data["origin"],
            genesis_hash=data["genesis_hash"],
            height=data["height"],
            log_size=data["log_size"],
            log_root=data["log_root"],
            node=data["node"],
            fork_origin=fork_origin,
            fork_height=fork_height,
        )


@dataclass(frozen=True, slots=True)
class RawBlock:
    """One block as stored: signed block bytes, checkpoint note, signed leaves."""

    height: int
    data: bytes
    checkpoint: str
    leaves: Sequence[bytes]

    def to_line(self) -> bytes:
        obj = {
            "height": self.height,
            "block": b64encode(self.data),
            "checkpoint": self.checkpoint,
            "leaves": [b64encode(x) for x in self.leaves],
        }
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_records(cls, block: BlockRecord, records: Sequence[TxRecord]) -> RawBlock:
        return cls(
            block.height, bytes(block.data), block.checkpoint, [bytes(r.leaf) for r in records]
        )


def _strict_b64(text: Any, height: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise _fail(height, f"{what} is not a base64 string")
    try:
        raw = b64decode(text, field=what)
    except InvalidInput as exc:
        raise _fail(height, f"{what} is not valid base64") from exc
    if b64encode(raw) != text:
        raise _fail(height, f"{what} is not canonical base64")
    return raw


def _parse_block_line(line: bytes, height: int) -> RawBlock:
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _fail(height, f"bundle line is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or set(obj) != _BLOCK_KEYS:
        raise _fail(height, "bundle line is not a block object (height, block, checkpoint, leaves)")
    if obj["height"] != height or not _is_count(obj["height"]):
        raise _fail(height, "block line out of order", expected=height, computed=obj["height"])
    if not isinstance(obj["checkpoint"], str) or not isinstance(obj["leaves"], list):
        raise _fail(height, "checkpoint must be a string and leaves a list")
    return RawBlock(
        height=height,
        data=_strict_b64(obj["block"], height, "block"),
        checkpoint=obj["checkpoint"],
        leaves=[_strict_b64(leaf, height, f"leaf {i}") for i, leaf in enumerate(obj["leaves"])],
    )


class BundleReader:
    """Reads a bundle one block at a time. Any problem with the content (not JSON, bad
    gzip, out of order, truncated, longer than its header) is ``VerificationFailed``:
    a damaged bundle is evidence that does not hold, whatever damaged it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw: io.BufferedIOBase = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no bundle file {path}", field="bundle") from None
        except OSError as exc:
            raise InvalidInput(
                f"cannot read bundle {path}: {exc.strerror}", field="bundle"
            ) from exc
        self._file: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if _gz(path) else raw
        self._raw = raw
        self._lines = self._read_lines()
        try:
            first = next(self._lines)
        except StopIteration:
            self.close()
            raise VerificationFailed(f"bundle {path} is empty", reason="empty bundle") from None
        except BaseException:
            self.close()
            raise
        try:
            self.header = BundleHeader.from_dict(json.loads(first))
        except ValueError as exc:
            self.close()
            raise VerificationFailed("bundle header is not JSON", reason=str(exc)) from exc
        except BaseException:
            self.close()
            raise

    def _read_lines(self) -> Iterator[bytes]:
        while True:
            try:
                line = self._file.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise VerificationFailed(
                    f"bundle {self.path} is unreadable: {exc}", reason=str(exc)
                ) from exc
            if not line:
                return
            yield line

    def blocks(self) -> Iterator[RawBlock]:
        """Blocks 0..header.height in order; refuses missing or extra ones."""
        expected = 0
        for line in self._lines:
            if expected > self.header.height:
                raise _fail(
                    expected,
                    f"bundle holds more blocks than its header says (height {self.header.height})",
                )
            yield _parse_block_line(line, expected)
            expected += 1
        if expected <= self.header.height:
            raise _fail(
                expected,
                f"bundle ends before block {expected}; its header says "
                f"height {self.header.height} (truncated?)",
            )

    def close(self) -> None:
        self._file.close()
        self._raw.close()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gz(path: Path) -> bool:
    return path.name.endswith(".gz")


# -- verification -------------------------------------------------------------------


def verify_block(verifier: LedgerVerifier, raw: RawBlock) -> list[SignedTransaction]:
    try:
        parsed = verifier.add_block(raw.data, raw.leaves, raw.checkpoint)
    except VerificationFailed:
        raise
    except OpsledgerError as exc:
        raise _fail(raw.height, exc.message) from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise _fail(raw.height, f"malformed data: {exc}") from exc
    return parsed


def check_header(header: BundleHeader, verifier: LedgerVerifier) -> VerifyResult:
    """The header's claims must be what the blocks proved."""
    result = verifier.result()
    claims = {
        "genesis_hash": (header.genesis_hash, result.genesis_hash),
        "origin": (header.origin, result.origin),
        "height": (header.height, result.height),
        "log_size": (header.log_size, result.log_size),
        "log_root": (header.log_root, result.log_root),
    }
    for name, (claimed, proved) in claims.items():
        if claimed != proved:
            raise VerificationFailed(
                f"bundle header {name} does not match its blocks",
                height=result.height,
                reason=f"header {name} mismatch",
                expected=proved,
                computed=claimed,
            )
    actor = verifier.registry.actors.get(header.node)
    if actor is None or NODE_ROLE not in actor.roles:
        raise VerificationFailed(
            f"bundle header names node {header.node!r}, which is not a node of this ledger",
            height=result.height,
            reason="header node mismatch",
        )
    return result


def signature_checker(checker: SignatureChecker | None) -> contextlib.AbstractContextManager[Any]:
    """Use the caller's checker, or a threaded one that is shut down afterwards."""
    if checker is not None:
        return contextlib.nullcontext(checker)
    threaded = ThreadedSignatureChecker()
    return contextlib.closing(threaded)


def verify_bundle(
    path: Path,
    *,
    genesis_hash: str | None = None,
    checker: SignatureChecker | None = None,
    progress: Progress | None = None,
) -> tuple[BundleHeader, VerifyResult]:
    """Verify a bundle from the file alone (no home, no network): every block, then every
    contract verdict re-executed. The blocks are copied into a scratch SQLite store as
    they verify, because re-executing a verdict needs indexed evidence lookups; the
    scratch store is deleted afterwards."""
    with (
        BundleReader(path) as reader,
        signature_checker(checker) as sig_checker,
        tempfile.TemporaryDirectory(prefix="opsledger-verify-") as scratch,
    ):
        header = reader.header
        verifier = LedgerVerifier(
            genesis_hash=genesis_hash,
            checker=sig_checker,
            fork_origin=header.fork_origin,
            fork_height=header.fork_height,
        )
        store = open_store(str(Path(scratch) / "ledger.db"))
        try:
            copy = VerifiedCopy(store, verifier)
            for raw in reader.blocks():
                copy.add(raw)
                if progress is not None:
                    progress(raw.height, header.height)
            result = check_header(header, verifier)
            copy.finish()
        finally:
            store.close()
        return header, result


def verify_home_store(
    store: LedgerStore,
    *,
    genesis_hash: str | None = None,
    checker: SignatureChecker | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """``ledger.verify_store`` (see there: everything, canonical bytes included), pinned to
    ``genesis_hash`` or else to the genesis hash the store's metadata names, reporting
    progress as (height, last height)."""
    pinned = genesis_hash or store.get_meta("genesis_hash")
    head = store.head()
    if head is None:
        raise VerificationFailed("the ledger holds no block", reason="empty store")

    def on_block(height: int, log_size: int) -> None:
        if progress is not None:
            progress(height, head.height)

    # verify_store pipelines blocks, which the verifier process serves best (see
    # ledger.sigpool: threads convoy on the GIL with the parsing thread).
    with signature_checker(checker or ProcessSignatureChecker()) as sig_checker:
        return verify_store(store, checker=sig_checker, progress=on_block, genesis_hash=pinned)


# -- export ---------------------------------------------------------------------------


def _header_for(store: LedgerStore, upto: int | None) -> tuple[BundleHeader, BlockRecord]:
    meta = {
        key: store.get_meta(key)
        for key in ("genesis_hash", "origin", "node_name", "fork_origin", "fork_height")
    }
    head = store.head()
    if head is None or not meta["genesis_hash"] or not meta["origin"] or not meta["node_name"]:
        raise NotFound("no ledger in this store: run `opsledger init` first")
    height = head.height if upto is None else upto
    if not 0 <= height <= head.height:
        raise InvalidInput(
            f"--upto must be between 0 and the head height {head.height}", field="upto"
        )
    last = head if height == head.height else store.get_block(height)
    if last is None:
        raise NotFound(f"no block at height {height}", field="upto")
    fork_height = meta["fork_height"]
    header = BundleHeader(
        origin=meta["origin"],
        genesis_hash=meta["genesis_hash"],
        height=height,
        log_size=last.log_size,
        log_root=last.log_root,
        node=meta["node_name"],
        fork_origin=meta["fork_origin"],
        fork_height=int(fork_height) if fork_height is not None else None,
    )
    return header, last


def _write_blocks(
    out: io.BufferedIOBase, store: LedgerStore, header: BundleHeader, progress: Progress | None
) -> None:
    out.write((json.dumps(header.to_dict(), separators=(",", ":")) + "\n").encode())
    for block, records in iter_store_blocks(store, 0, header.height + 1):
        out.write(RawBlock.from_records(block, records).to_line())
        if progress is not None:
            progress(block.height, header.height)


def export_bundle(
    store: LedgerStore, path: Path, *, upto: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Write blocks 0..``upto`` (default: the head) to ``path``, atomically: the file
    appears complete or not at all (it is written beside and renamed)."""
    header, last = _header_for(store, upto)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as raw:
            if _gz(path):
                # mtime=0: the same ledger exports to the same bytes.
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
                    _write_blocks(packed, store, header, progress)
            else:
                _write_blocks(raw, store, header, progress)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}", field="file") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": str(path), **header.to_dict(), "transactions": last.log_size}


class VerifiedCopy:
    """Verifies each block, then appends it to a fresh store exactly as a node would
    have (records, tree nodes, nonces), so the copy is a ledger in its own right; and at
    the end re-executes every recorded contract verdict against it (``finish``)."""

    def __init__(self, store: LedgerStore, verifier: LedgerVerifier) -> None:
        self.store = store
        self.verifier = verifier
        self.tree = CompactRange.empty()
        self.admin: str | None = None
        self.book = ContractBook()

    def add(self, raw: RawBlock) -> None:
        stxs = verify_block(self.verifier, raw)
        block = Block.from_bytes(raw.data)
        header = block.header
        if raw.height == 0 and stxs:
            self.admin = stxs[0].tx.actor  # the genesis anchor: the first admin
        first = self.tree.size
        nodes = self.tree.extend([stx.leaf_hash for stx in stxs])
        records: list[TxRecord] = []
        nonces: dict[str, int] = {}
        for i, stx in enumerate(stxs):
            tx = stx.tx
            records.append(
                TxRecord(
                    tx_id=stx.tx_id,
                    leaf_index=first + i,
                    height=raw.height,
                    type=tx.type,
                    actor=tx.actor,
                    subject_kind=tx.subject.kind,
                    subject_id=tx.subject.id,
                    ts=tx.ts,
                    nonce=tx.nonce,
                    leaf=stx.leaf,
                )
            )
            nonces[tx.actor] = max(nonces.get(tx.actor, -1), tx.nonce)
        self.store.append_block(
            BlockRecord(
                height=raw.height,
                block_hash=block.block_hash,
                log_size=header.log_size,
                log_root=header.log_root,
                time=header.time,
                data=raw.data,
                checkpoint=raw.checkpoint,
            ),
            records,
            nodes,
            nonces,
        )
        check_deployments(self.book, raw.height, records, stxs)

    def finish(self) -> int:
        """Re-execute every recorded verdict from the copy; returns how many."""
        return verify_contracts(
            self.store, self.book, StoreEvidence(self.store, self.verifier.registry)
        )
