"""The RFC 9162 Merkle log: hashing, proofs from stored nodes, and proof verification.

Everything here works on raw values (sizes, indexes, 32-byte hashes), never on wire
models, so the ledger node, the store, the client and ``opsledger verify`` share one
implementation and each of them only translates its own formats.

Hashing is RFC 9162 section 2.1.1 with SHA-256: ``leaf_hash(d) = H(0x00 || d)``,
``node_hash(l, r) = H(0x01 || l || r)``, and the empty tree's root is ``H("")``. The
different prefixes keep a leaf from ever being passed off as an interior node.

**How the store holds the tree.** A *perfect subtree node* ``(level, index)`` covers the
leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hashes. Once a
perfect subtree is complete its hash never changes, so the store keeps every one of them
as leaves are appended (``CompactRange.append`` hands back exactly the new ones, about
``2n`` nodes for ``n`` leaves). Any other node an RFC 9162 tree needs is an *incomplete*
subtree on the right edge of some tree size; its hash is the right fold of the few
perfect subtrees that tile it. So every proof, and the root at any past size, costs
O(log n) stored hashes, fetched in **one** batch through a ``NodeGetter``: we first work
out which node ids are needed, fetch them, then hash. Nothing ever rebuilds a tree.

**Verification** transcribes RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step. On top
of the RFC we check lengths up front (every hash is 32 bytes, the proof has exactly the
number of hashes that the index and sizes imply) so a bad proof fails with a message that
says what is wrong instead of a bare root mismatch. Note that an inclusion proof does not
by itself pin the tree size: a proof for ``(index, size)`` also verifies for any other
size whose audit path has the same left/right shape (e.g. leaf 0 in sizes 3 and 4). The
size is bound by the signed checkpoint that carries the root, never by the proof.

**Errors.** Anything wrong with *evidence* (proofs, roots, leaf hashes, or the sizes and
indexes claimed for them) raises ``ProofError`` with ``index``/``size`` or
``first``/``second`` and, on a root mismatch, ``expected``/``computed`` hex. Asking for a
proof that cannot exist (negative numbers, ``index >= size``, ``first > second``) or
handing in something that is not a 32-byte hash where one is required is the caller's
mistake and raises ``InvalidInput``. A ``NodeGetter`` that answers with the wrong number
of hashes, or with something that is not a 32-byte hash, raises ``StorageError``.

The module is pure: hashlib only, no I/O. It hashes with ``hashlib`` directly rather than
``encoding.sha256`` so importing it never pulls in the JSON canonicaliser.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from opsledger.core.errors import InvalidInput, ProofError, StorageError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "NodeGetter",
    "NodeId",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_at",
    "root_from_inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
"""Bytes in every hash of the tree (SHA-256)."""

EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string: the root of the tree of size 0."""

NodeId = tuple[int, int]
"""A perfect-subtree node ``(level, index)``: leaves [index * 2**level, (index + 1) * 2**level)."""

NodeGetter = Callable[[Sequence[NodeId]], Sequence[bytes]]
"""Batch lookup of stored perfect-subtree hashes, answered in the order asked."""

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256
_BYTES_TYPES: Final = (bytes, bytearray)


# -- hashing ------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash ``SHA-256(0x00 || data)`` of one log entry."""
    digest = _sha256(_LEAF_PREFIX)
    digest.update(data)
    return digest.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, computed level by level without recursion.

    Pairing neighbours on each level and carrying an odd last node up unchanged builds
    exactly RFC 9162's tree (split at the largest power of two below ``n``): the carried
    node is the incomplete right edge, which the RFC also hashes only once its left
    sibling exists. Each hash must be 32 bytes (passing raw entries by mistake is the
    likely bug this catches); otherwise ``InvalidInput``.
    """
    for position, value in enumerate(leaf_hashes):
        _require_hash(value, f"leaf_hashes[{position}]")
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [
            _sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """Hash of the subtree tiled by ``hashes`` (perfect subtrees, left to right, sizes
    strictly decreasing): RFC 9162 splits off the largest power of two first, so the
    leftmost tile is the left child and the rest, recursively, the right child."""
    result = hashes[-1]
    for value in reversed(hashes[:-1]):
        result = _sha256(_NODE_PREFIX + value + result).digest()
    return result


# -- which stored nodes a proof needs -------------------------------------------------


def _tiles(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees tiling leaves ``[start, end)``, left to right, largest first.

    Valid when ``start`` is a multiple of a power of two above ``end - start``, which
    holds for ``start == 0`` and for every incomplete right-edge subtree.
    """
    tiles: list[NodeId] = []
    length = end - start
    position = start
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            tiles.append((level, position >> level))
            position += 1 << level
    return tiles


def _path_plan(index: int, level: int, size: int) -> list[list[NodeId]]:
    """The audit path of node ``(level, index)`` in the tree of ``size`` leaves, bottom up.

    Each entry is one proof hash, given as the stored perfect nodes it folds from: a
    single node for a complete sibling, the tiles for the one sibling that may straddle
    the right edge. Siblings that start at or beyond ``size`` do not exist in the RFC
    tree (a lone left child is promoted), so they are skipped.
    """
    plan: list[list[NodeId]] = []
    node = index
    for height in range(level, (size - 1).bit_length()):
        sibling = node ^ 1
        start = sibling << height
        if start < size:
            if start + (1 << height) <= size:
                plan.append([(height, sibling)])
            else:
                plan.append(_tiles(start, size))
        node >>= 1
    return plan


def _fetch(plan: Sequence[Sequence[NodeId]], get_nodes: NodeGetter) -> list[bytes]:
    """Fetch every node of ``plan`` in one ``get_nodes`` call and fold each group."""
    ids = [node_id for group in plan for node_id in group]
    if not ids:
        return []
    hashes = get_nodes(ids)
    if len(hashes) != len(ids):
        raise StorageError(
            f"node getter returned {len(hashes)} hashes for {len(ids)} node ids",
            requested=len(ids),
            returned=len(hashes),
        )
    checked: list[bytes] = []
    for node_id, value in zip(ids, hashes, strict=True):
        if not isinstance(value, _BYTES_TYPES) or len(value) != HASH_SIZE:
            raise StorageError(
                f"node getter returned a malformed hash for node {node_id}",
                level=node_id[0],
                index=node_id[1],
            )
        checked.append(value if type(value) is bytes else bytes(value))
    result: list[bytes] = []
    position = 0
    for group in plan:
        end = position + len(group)
        result.append(
            checked[position] if end == position + 1 else _fold_right(checked[position:end])
        )
        position = end
    return result


def _require_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidInput(f"{what} must be a {HASH_SIZE}-byte hash, got {len(value)} bytes")


def _require_count(value: int, what: str) -> None:
    if value < 0:
        raise InvalidInput(f"{what} must not be negative, got {value}")


# -- proofs and past roots from stored nodes -------------------------------------------


def inclusion_proof(index: int, size: int, get_nodes: NodeGetter) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]) (section 2.1.3.1), from stored perfect nodes.

    Fetches at most about ``2 * log2(size)`` nodes in a single ``get_nodes`` call (none
    for a one-leaf tree). ``InvalidInput`` unless ``0 <= index < size``.
    """
    _require_count(index, "leaf index")
    if index >= size:
        raise InvalidInput(f"leaf index {index} is not below tree size {size}")
    return _fetch(_path_plan(index, 0, size), get_nodes)


def consistency_proof(first: int, second: int, get_nodes: NodeGetter) -> list[bytes]:
    """RFC 9162 PROOF(first, D[0:second]) (section 2.1.4.1), from stored perfect nodes.

    The proof is the perfect subtree that ends the first tree (left out when the first
    tree is itself perfect: the verifier already holds its root), then that subtree's
    audit path in the second tree. Empty when ``first == second`` or ``first == 0``.
    ``InvalidInput`` unless ``0 <= first <= second``.
    """
    _require_count(first, "first tree size")
    if first > second:
        raise InvalidInput(f"first tree size {first} is larger than second tree size {second}")
    if first in (0, second):
        return []
    level = (first & -first).bit_length() - 1  # the lowest set bit of first
    index = (first >> level) - 1
    plan: list[list[NodeId]] = [] if index == 0 else [[(level, index)]]
    plan.extend(_path_plan(index, level, second))
    return _fetch(plan, get_nodes)


def root_at(size: int, get_nodes: NodeGetter) -> bytes:
    """The root of the tree of ``size`` leaves (any past size), from O(log n) nodes."""
    _require_count(size, "tree size")
    if size == 0:
        return EMPTY_ROOT
    return _fetch([_tiles(0, size)], get_nodes)[0]


# -- the right edge, for appending ------------------------------------------------------


class CompactRange:
    """The right edge of a tree of ``size`` leaves: the roots of its perfect subtrees.

    One hash per set bit of ``size``, left (largest) to right, so O(log n) state is
    enough to append leaves, emit the nodes the store must keep, and compute the root.
    A node restarts from the store with ``from_nodes`` instead of replaying the log.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Adopt an existing edge; ``hashes`` are the perfect-subtree roots of ``size``."""
        _require_count(size, "tree size")
        if len(hashes) != size.bit_count():
            raise InvalidInput(
                f"a tree of size {size} has {size.bit_count()} perfect subtrees, "
                f"got {len(hashes)} hashes"
            )
        for position, value in enumerate(hashes):
            _require_hash(value, f"hashes[{position}]")
        self._size = size
        self._hashes = [bytes(value) for value in hashes]

    @classmethod
    def empty(cls) -> CompactRange:
        """The edge of the empty tree."""
        return cls()

    @classmethod
    def from_nodes(cls, size: int, get_nodes: NodeGetter) -> CompactRange:
        """Rebuild the edge of ``size`` from the store (one batch of O(log n) nodes)."""
        _require_count(size, "tree size")
        if size == 0:
            return cls()
        ids = _tiles(0, size)
        return cls(size, _fetch([[node_id] for node_id in ids], get_nodes))

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect-subtree roots, largest (leftmost) first."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return every perfect-subtree node it completes.

        The list starts with the leaf itself ``(0, index, leaf_hash)`` and then each
        parent that became complete, bottom up, as ``(level, index, hash)``: exactly
        what the store must add so later proofs never need a rebuild.
        """
        _require_hash(leaf_hash, "leaf hash")
        index = self._size
        current = bytes(leaf_hash)
        created = [(0, index, current)]
        level = 0
        hashes = self._hashes
        # Each trailing 1 bit of the old size is a perfect subtree that the new leaf
        # completes into one twice its size.
        while index & 1:
            current = _sha256(_NODE_PREFIX + hashes.pop() + current).digest()
            level += 1
            index >>= 1
            created.append((level, index, current))
        hashes.append(current)
        self._size += 1
        return created

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Append several leaf hashes in order; return all new nodes in creation order."""
        created: list[tuple[int, int, bytes]] = []
        for value in leaf_hashes:
            created.extend(self.append(value))
        return created

    def root(self) -> bytes:
        """MTH of the whole tree (``EMPTY_ROOT`` when empty)."""
        if not self._hashes:
            return EMPTY_ROOT
        return _fold_right(self._hashes)

    def copy(self) -> CompactRange:
        """An independent copy (e.g. to try a block before committing it)."""
        clone = CompactRange.__new__(CompactRange)
        clone._size = self._size
        clone._hashes = list(self._hashes)
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable: never a dict key

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"


# -- verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) --------------------------------


def _inclusion_length(index: int, size: int) -> int:
    """Hashes in the audit path of leaf ``index`` in a tree of ``size`` (0 <= index < size).

    Below the level where the paths to ``index`` and to the last leaf meet, every level
    has a sibling; above it the path runs along the right edge and only levels where
    ``index`` has a 1 bit (a left sibling) contribute.
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_length(first: int, second: int) -> int:
    """Hashes in PROOF(first, D[0:second]) for 0 < first < second (see consistency_proof)."""
    level = (first & -first).bit_length() - 1
    index = (first >> level) - 1
    last = (second - 1) >> level
    inner = (index ^ last).bit_length()
    return (1 if index else 0) + inner + (index >> inner).bit_count()


def _proof_hash(value: bytes, what: str, **details: object) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(
            f"{what} must be a {HASH_SIZE}-byte hash, got {len(value)} bytes", **details
        )


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` leads to from ``leaf_hash`` at ``index`` (RFC 9162 2.1.3.2).

    ``ProofError`` if the inputs cannot form a valid proof: negative numbers,
    ``index >= size``, a hash that is not 32 bytes, or the wrong number of hashes.
    """
    details: dict[str, object] = {"index": index, "size": size}
    if index < 0 or size < 0:
        raise ProofError("leaf index and tree size must not be negative", **details)
    # 1. leaf_index must be below tree_size.
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}", **details)
    _proof_hash(leaf_hash, "leaf hash", **details)
    for position, value in enumerate(proof):
        _proof_hash(value, f"inclusion proof hash {position}", **details)
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} must have "
            f"{expected} hashes, got {len(proof)}",
            **details,
        )
    # 2.-3. fn = leaf_index, sn = tree_size - 1, r = hash.
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    # 4. Walk the path.
    for p in proof:
        # a. A hash left over once sn reaches 0 means the proof is too long (cannot
        #    happen after the length check; kept so the loop is the RFC's, step by step).
        if sn == 0:
            raise ProofError("inclusion proof is longer than the audit path", **details)
        # b. p is a left sibling when fn is odd, or when fn is on the right edge.
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            # ii. Skip the levels where fn is a lone left child on the right edge.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        # c.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 (the proof reached the root).
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the audit path", **details)
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Returns nothing on success; raises ``ProofError`` (with ``index``, ``size``,
    ``expected`` = claimed root hex and ``computed`` = root the proof leads to) otherwise.
    """
    _proof_hash(root, "root", index=index, size=size)
    computed = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if computed != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not lead to the root of tree size {size}",
            index=index,
            size=size,
            expected=bytes(root).hex(),
            computed=computed.hex(),
        )


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``second`` with ``second_root`` extends that of ``first``.

    RFC 9162 2.1.4.2 for ``0 < first < second``. The RFC leaves the trivial cases to
    the caller; we accept them only with an empty proof and when they are true on
    their own: ``first == second`` needs equal roots, and the empty tree (``first ==
    0``) must have ``EMPTY_ROOT``, since it is consistent with everything. Raises
    ``ProofError`` with ``first``, ``second`` and, on a root mismatch, ``root``
    ("first"/"second"), ``expected`` and ``computed`` hex.
    """
    details: dict[str, object] = {"first": first, "second": second}
    if first < 0 or second < 0:
        raise ProofError("tree sizes must not be negative", **details)
    if first > second:
        raise ProofError(
            f"first tree size {first} is larger than second tree size {second}", **details
        )
    _proof_hash(first_root, "first root", **details)
    _proof_hash(second_root, "second root", **details)
    for position, value in enumerate(proof):
        _proof_hash(value, f"consistency proof hash {position}", **details)

    if first in (0, second):
        if proof:
            raise ProofError(
                f"consistency proof from size {first} to {second} must be empty, "
                f"got {len(proof)} hashes",
                **details,
            )
        if first == 0 and first_root != EMPTY_ROOT:
            raise ProofError(
                "the root of the empty tree must be SHA-256 of the empty string",
                root="first",
                expected=EMPTY_ROOT.hex(),
                computed=bytes(first_root).hex(),
                **details,
            )
        if first == second and first_root != second_root:
            raise ProofError(
                f"two different roots for the same tree size {first}",
                root="second",
                expected=bytes(second_root).hex(),
                computed=bytes(first_root).hex(),
                **details,
            )
        return

    expected_length = _consistency_length(first, second)
    if len(proof) != expected_length:
        raise ProofError(
            f"consistency proof from size {first} to {second} must have "
            f"{expected_length} hashes, got {len(proof)}",
            **details,
        )
    # 1. An empty path fails (cannot happen after the length check).
    if not proof:
        raise ProofError("consistency proof is empty", **details)
    # 2. A perfect first tree is its own subtree: the verifier supplies its root.
    path = [bytes(value) for value in proof]
    if first & (first - 1) == 0:
        path.insert(0, bytes(first_root))
    # 3.
    fn, sn = first - 1, second - 1
    # 4. Climb to the top of the perfect subtree that ends the first tree.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        # a. (cannot happen after the length check)
        if sn == 0:
            raise ProofError("consistency proof is longer than its path", **details)
        # b. c is a left sibling: it is in both trees.
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        # Otherwise c is a right sibling: only the second tree has it.
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        # c.
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise ProofError("consistency proof is shorter than its path", **details)
    if fr != first_root:
        raise ProofError(
            f"consistency proof does not lead to the root of tree size {first}",
            root="first",
            expected=bytes(first_root).hex(),
            computed=fr.hex(),
            **details,
        )
    if sr != second_root:
        raise ProofError(
            f"consistency proof does not lead to the root of tree size {second}",
            root="second",
            expected=bytes(second_root).hex(),
            computed=sr.hex(),
            **details,
        )
