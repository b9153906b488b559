"""Tests for ``opsledger.core.merkle``.

Three independent sources of truth:

* published Certificate Transparency vectors (google/certificate-transparency
  ``cpp/merkletree/merkle_tree_test.cc``, repeated in transparency-dev/merkle
  ``testonly/constants.go`` and ``proof/verify_test.go``);
* ``opsledger.testing.reference_merkle``, written straight from RFC 9162's recursive
  definitions and verification step lists;
* hypothesis, for random trees, and a *symbolic* run of the RFC verifier (hashes replaced
  by expression trees) to predict exactly which wrong sizes a verifier must accept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opsledger.core.errors import InvalidInput, ProofError, StorageError, VerificationFailed
from opsledger.core.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeId,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_at,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from opsledger.testing import reference_merkle as ref
from opsledger.testing.reference_merkle import ReferenceTree

# -- published vectors -------------------------------------------------------------------

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

# ROOTS[n] is the root of the tree of the first n LEAVES.
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]

# Every perfect-subtree node of the 8-leaf tree: NODE_HASHES[level][index].
NODE_HASHES = [
    [
        bytes.fromhex(h)
        for h in (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        )
    ],
    [
        bytes.fromhex(h)
        for h in (
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        )
    ],
    [
        bytes.fromhex(h)
        for h in (
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        )
    ],
    [bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# The compact range (right edge) after each size, as node ids into NODE_HASHES.
COMPACT_RANGES: dict[int, list[NodeId]] = {
    0: [],
    1: [(0, 0)],
    2: [(1, 0)],
    3: [(1, 0), (0, 2)],
    4: [(2, 0)],
    5: [(2, 0), (0, 4)],
    6: [(2, 0), (1, 2)],
    7: [(2, 0), (1, 2), (0, 6)],
    8: [(3, 0)],
}

# (leaf index, tree size, audit path). The published vectors number leaves from 1.
INCLUSION_VECTORS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (first size, second size, consistency proof).
CONSISTENCY_VECTORS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# -- helpers ------------------------------------------------------------------------------


class Store:
    """Perfect-subtree nodes collected from ``CompactRange.append``, as the store keeps them."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.nodes: dict[NodeId, bytes] = {}
        self.ranges: list[CompactRange] = [CompactRange.empty()]
        edge = CompactRange.empty()
        for entry in entries:
            for level, index, value in edge.append(leaf_hash(entry)):
                assert (level, index) not in self.nodes, "a node was emitted twice"
                self.nodes[(level, index)] = value
            self.ranges.append(edge.copy())
        self.size = len(entries)

    def getter(self, size: int | None = None) -> Getter:
        return Getter(self.nodes, self.size if size is None else size)


class Getter:
    """A NodeGetter that counts calls and insists every node asked for is complete
    within ``size`` (a store at that size would not have any other)."""

    def __init__(self, nodes: dict[NodeId, bytes], size: int) -> None:
        self.nodes = nodes
        self.size = size
        self.calls = 0
        self.requested: list[NodeId] = []

    def __call__(self, ids: Sequence[NodeId]) -> list[bytes]:
        self.calls += 1
        self.requested.extend(ids)
        for level, index in ids:
            assert level >= 0
            assert index >= 0
            assert (index + 1) << level <= self.size, f"node {(level, index)} beyond {self.size}"
        return [self.nodes[node_id] for node_id in ids]


class FabricatingGetter:
    """Answers any node id with a deterministic fake hash; counts what is asked."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0
        self.requested: list[NodeId] = []

    def __call__(self, ids: Sequence[NodeId]) -> list[bytes]:
        self.calls += 1
        self.requested.extend(ids)
        for level, index in ids:
            assert (index + 1) << level <= self.size
        return [hashlib.sha256(f"{level}/{index}".encode()).digest() for level, index in ids]


def flip(value: bytes, bit: int) -> bytes:
    """``value`` with one bit flipped (``bit`` counted from the first byte's LSB)."""
    bit %= len(value) * 8
    mutated = bytearray(value)
    mutated[bit // 8] ^= 1 << (bit % 8)
    return bytes(mutated)


def rejects_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    try:
        verify_inclusion(index, size, leaf, proof, root)
    except ProofError:
        return True
    return False


def rejects_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    try:
        verify_consistency(first, second, first_root, second_root, proof)
    except ProofError:
        return True
    return False


Expr = object


def combine_symbolically(left: Expr, right: Expr) -> Expr:
    """HASH(0x01 || left || right) as an expression tree: equal iff the hashes are
    (for an injective hash over independent inputs)."""
    return ("H", left, right)


def symbols(count: int) -> list[Expr]:
    return [f"p{i}" for i in range(count)]


def distinct_entries(size: int, salt: bytes) -> list[bytes]:
    """Entries that are pairwise different, so no two subtrees share a hash."""
    return [salt + i.to_bytes(2, "big") for i in range(size)]


# -- hashing and published vectors --------------------------------------------------------


def test_hash_primitives_follow_rfc9162() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == NODE_HASHES[0][0]
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(NODE_HASHES[0][0], NODE_HASHES[0][1]) == NODE_HASHES[1][0]
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    # Domain separation: a leaf can never pose as a node, nor raw data as either.
    assert leaf_hash(b"x" * 64) != node_hash(b"x" * 32, b"x" * 32)


def test_published_leaf_and_node_hashes() -> None:
    assert [leaf_hash(entry) for entry in LEAVES] == NODE_HASHES[0]
    store = Store(LEAVES)
    expected = {
        (level, index): value
        for level, row in enumerate(NODE_HASHES)
        for index, value in enumerate(row)
    }
    assert store.nodes == expected  # every perfect subtree, each exactly once


@pytest.mark.parametrize("size", range(9))
def test_published_roots(size: int) -> None:
    hashes = [leaf_hash(entry) for entry in LEAVES[:size]]
    store = Store(LEAVES)
    assert root_of(hashes) == ROOTS[size]
    assert ref.mth(LEAVES[:size]) == ROOTS[size]
    assert store.ranges[size].root() == ROOTS[size]
    assert root_at(size, store.getter(size)) == ROOTS[size]
    assert CompactRange.from_nodes(size, store.getter(size)).root() == ROOTS[size]


@pytest.mark.parametrize("size", range(9))
def test_published_compact_ranges(size: int) -> None:
    store = Store(LEAVES)
    expected = tuple(NODE_HASHES[level][index] for level, index in COMPACT_RANGES[size])
    assert store.ranges[size].hashes == expected
    assert store.ranges[size].size == size
    assert CompactRange.from_nodes(size, store.getter(size)).hashes == expected


@pytest.mark.parametrize(("index", "size", "proof_hex"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, proof_hex: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in proof_hex]
    store = Store(LEAVES)
    leaf = leaf_hash(LEAVES[index])
    assert inclusion_proof(index, size, store.getter(size)) == expected
    assert ReferenceTree(LEAVES).path(index, size) == expected
    assert root_from_inclusion_proof(index, size, leaf, expected) == ROOTS[size]
    verify_inclusion(index, size, leaf, expected, ROOTS[size])
    assert ref.verify_inclusion(index, size, leaf, expected, ROOTS[size])


@pytest.mark.parametrize(("first", "second", "proof_hex"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(first: int, second: int, proof_hex: list[str]) -> None:
    expected = [bytes.fromhex(h) for h in proof_hex]
    store = Store(LEAVES)
    assert consistency_proof(first, second, store.getter(second)) == expected
    assert ReferenceTree(LEAVES).proof(first, second) == expected
    verify_consistency(first, second, ROOTS[first], ROOTS[second], expected)


def _inclusion_probes(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> dict[str, tuple[int, int, bytes, list[bytes], bytes]]:
    """The corruptions transparency-dev/merkle's verifier tests apply to each vector."""
    probes = {
        "index - 1": (index - 1, size, leaf, proof, root),
        "index + 1": (index + 1, size, leaf, proof, root),
        "index ^ 2": (index ^ 2, size, leaf, proof, root),
        "size * 2": (index, size * 2, leaf, proof, root),
        "size // 2": (index, size // 2, leaf, proof, root),
        "wrong leaf": (index, size, b"WrongLeaf", proof, root),
        "other leaf": (index, size, SOME_HASH, proof, root),
        "empty root": (index, size, leaf, proof, EMPTY_ROOT),
        "random root": (index, size, leaf, proof, SOME_HASH),
        "trailing garbage": (index, size, leaf, [*proof, b""], root),
        "trailing root": (index, size, leaf, [*proof, root], root),
        "preceding garbage": (index, size, leaf, [b"", *proof], root),
        "preceding root": (index, size, leaf, [root, *proof], root),
    }
    for i in range(len(proof)):
        probes[f"proof[{i}] bit 3"] = (
            index,
            size,
            leaf,
            [*proof[:i], flip(proof[i], 3), *proof[i + 1 :]],
            root,
        )
    if proof:
        probes["removed component"] = (index, size, leaf, proof[:-1], root)
    if len(proof) > 1:
        probes["inserted component"] = (index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root)
    return probes


@pytest.mark.parametrize(("index", "size", "proof_hex"), INCLUSION_VECTORS)
def test_published_inclusion_proofs_reject_corruption(
    index: int, size: int, proof_hex: list[str]
) -> None:
    proof = [bytes.fromhex(h) for h in proof_hex]
    probes = _inclusion_probes(index, size, leaf_hash(LEAVES[index]), proof, ROOTS[size])
    accepted = [name for name, probe in probes.items() if not rejects_inclusion(*probe)]
    assert accepted == []


@pytest.mark.parametrize(("first", "second", "proof_hex"), CONSISTENCY_VECTORS[1:])
def test_published_consistency_proofs_reject_corruption(
    first: int, second: int, proof_hex: list[str]
) -> None:
    proof = [bytes.fromhex(h) for h in proof_hex]
    r1, r2 = ROOTS[first], ROOTS[second]
    probes = {
        "first - 1": (first - 1, second, r1, r2, proof),
        "first + 1": (first + 1, second, r1, r2, proof),
        "first ^ 2": (first ^ 2, second, r1, r2, proof),
        "second * 2": (first, second * 2, r1, r2, proof),
        "second // 2": (first, second // 2, r1, r2, proof),
        "wrong root1": (first, second, b"WrongRoot", r2, proof),
        "wrong root2": (first, second, r1, b"WrongRoot", proof),
        "other root1": (first, second, SOME_HASH, r2, proof),
        "other root2": (first, second, r1, SOME_HASH, proof),
        "swapped roots": (first, second, r2, r1, proof),
        "empty proof": (first, second, r1, r2, []),
        "trailing garbage": (first, second, r1, r2, [*proof, b""]),
        "trailing root1": (first, second, r1, r2, [*proof, r1]),
        "trailing root2": (first, second, r1, r2, [*proof, r2]),
        "preceding garbage": (first, second, r1, r2, [b"", *proof]),
        "preceding root1": (first, second, r1, r2, [r1, *proof]),
        "preceding root2": (first, second, r1, r2, [r2, *proof]),
        "preceding proof[0]": (first, second, r1, r2, [proof[0], *proof]),
        "truncated proof": (first, second, r1, r2, proof[:-1]),
    }
    for i in range(len(proof)):
        probes[f"proof[{i}] bit 4"] = (
            first,
            second,
            r1,
            r2,
            [*proof[:i], flip(proof[i], 4), *proof[i + 1 :]],
        )
    accepted = [name for name, probe in probes.items() if not rejects_consistency(*probe)]
    assert accepted == []


def test_single_entry_tree() -> None:
    """A one-leaf tree's root is the leaf hash and its proof is empty."""
    value = leaf_hash(b"data")
    verify_inclusion(0, 1, value, [], value)
    for leaf, root in ((value, b""), (b"", value), (b"", b""), (SOME_HASH, value)):
        with pytest.raises(ProofError):
            verify_inclusion(0, 1, leaf, [], root)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 1), (0, -1)])
def test_inclusion_out_of_range_is_rejected(index: int, size: int) -> None:
    for leaf, root in ((SOME_HASH, b""), (b"", EMPTY_ROOT), (SOME_HASH, EMPTY_ROOT)):
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, [], root)


CONSISTENCY_EDGE_CASES = [
    # first, second, first_root, second_root, proof, accepted
    (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
    (0, 0, SOME_HASH, SOME_HASH, [], False),  # the empty tree has only one root
    (0, 0, EMPTY_ROOT, SOME_HASH, [], False),
    (0, 5, EMPTY_ROOT, SOME_HASH, [], True),  # the empty tree is a prefix of every tree
    (0, 5, SOME_HASH, ROOTS[5], [], False),  # stricter than transparency-dev: see module
    (1, 1, ROOTS[1], ROOTS[1], [], True),
    (1, 1, ROOTS[1], ROOTS[2], [], False),
    (1, 0, ROOTS[1], EMPTY_ROOT, [], False),  # time travel to the past
    (2, 1, ROOTS[2], ROOTS[1], [], False),
    (1, 2, ROOTS[1], ROOTS[2], [], False),  # non-trivial: a proof is required
    (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),  # trivial: the proof must be empty
    (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    (-1, 1, ROOTS[1], ROOTS[1], [], False),
    (1, 1, b"short", b"short", [], False),
]


@pytest.mark.parametrize(
    ("first", "second", "first_root", "second_root", "proof", "accepted"),
    CONSISTENCY_EDGE_CASES,
)
def test_consistency_edge_cases(
    first: int,
    second: int,
    first_root: bytes,
    second_root: bytes,
    proof: list[bytes],
    accepted: bool,
) -> None:
    assert rejects_consistency(first, second, first_root, second_root, proof) is not accepted


def test_proof_error_carries_details() -> None:
    store = Store(LEAVES)
    proof = inclusion_proof(2, 7, store.getter(7))
    with pytest.raises(ProofError) as caught:
        verify_inclusion(2, 7, leaf_hash(LEAVES[2]), proof, ROOTS[6])
    error = caught.value
    assert isinstance(error, VerificationFailed)
    assert error.details["index"] == 2
    assert error.details["size"] == 7
    assert error.details["expected"] == ROOTS[6].hex()
    assert error.details["computed"] == ROOTS[7].hex()
    assert error.to_dict()["code"] == "proof_error"

    with pytest.raises(ProofError, match="must have 3 hashes, got 2") as caught:
        verify_inclusion(2, 7, leaf_hash(LEAVES[2]), proof[:2], ROOTS[7])

    with pytest.raises(ProofError, match="not below tree size") as caught:
        verify_inclusion(7, 7, leaf_hash(LEAVES[2]), proof, ROOTS[7])
    assert caught.value.details == {"index": 7, "size": 7}

    cproof = consistency_proof(3, 7, store.getter(7))
    with pytest.raises(ProofError) as caught:
        verify_consistency(3, 7, ROOTS[3], ROOTS[6], cproof)
    assert caught.value.details["root"] == "second"
    assert caught.value.details["expected"] == ROOTS[6].hex()
    assert caught.value.details["computed"] == ROOTS[7].hex()
    assert (caught.value.details["first"], caught.value.details["second"]) == (3, 7)

    with pytest.raises(ProofError) as caught:
        verify_consistency(3, 7, ROOTS[2], ROOTS[7], cproof)
    assert caught.value.details["root"] == "first"
    assert caught.value.details["computed"] == ROOTS[3].hex()

    assert len(cproof) == 4
    with pytest.raises(ProofError, match="from size 3 to 7 must have 4 hashes, got 5"):
        verify_consistency(3, 7, ROOTS[3], ROOTS[7], [*cproof, SOME_HASH])

    with pytest.raises(ProofError, match="larger than second"):
        verify_consistency(7, 3, ROOTS[7], ROOTS[3], cproof)


# -- exhaustive against the reference on small trees --------------------------------------

SMALL = [bytes([i]) * (i % 5) + b"#" for i in range(48)]


def test_every_small_proof_matches_reference_and_verifies() -> None:
    store = Store(SMALL)
    tree = ReferenceTree(SMALL)
    for size in range(len(SMALL) + 1):
        root = tree.mth(0, size)
        getter = store.getter(size)
        assert root_at(size, getter) == root
        for index in range(size):
            proof = inclusion_proof(index, size, getter)
            assert proof == tree.path(index, size), (index, size)
            verify_inclusion(index, size, leaf_hash(SMALL[index]), proof, root)
        for first in range(size + 1):
            proof = consistency_proof(first, size, getter)
            assert proof == tree.proof(first, size), (first, size)
            verify_consistency(first, size, tree.mth(0, first), root, proof)
        assert getter.calls <= 2 * size + 2  # one batch per proof or root


# -- hypothesis: random trees against the reference ---------------------------------------

entry_lists = st.integers(min_value=1, max_value=300).flatmap(
    lambda n: st.lists(st.binary(max_size=4), min_size=n, max_size=n)
)
seeds = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entry_lists)
@example(entries=LEAVES)
@example(entries=[b""] * 300)  # identical leaves: every sibling pair hashes alike
@example(entries=[bytes([i % 256]) for i in range(257)])
def test_roots_after_every_append_match_reference(entries: list[bytes]) -> None:
    store = Store(entries)
    tree = ReferenceTree(entries)
    hashes = [leaf_hash(entry) for entry in entries]
    for size in range(len(entries) + 1):
        expected = tree.mth(0, size)
        assert store.ranges[size].root() == expected
        assert store.ranges[size].size == size
        assert root_at(size, store.getter(size)) == expected
        rebuilt = CompactRange.from_nodes(size, store.getter(size))
        assert rebuilt == store.ranges[size]
    assert root_of(hashes) == tree.mth()
    # Restart at any size: rebuilding from the store and appending the rest emits
    # exactly the nodes the uninterrupted run emitted.
    middle = len(entries) // 2
    rebuilt = CompactRange.from_nodes(middle, store.getter(middle))
    for level, index, value in rebuilt.extend(hashes[middle:]):
        assert store.nodes[(level, index)] == value
    assert rebuilt.root() == tree.mth()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entry_lists, size_seed=seeds)
@example(entries=LEAVES, size_seed=7)
@example(entries=[b""] * 300, size_seed=299)
@example(entries=[bytes([i % 256]) for i in range(300)], size_seed=256)
def test_every_inclusion_proof_matches_reference(entries: list[bytes], size_seed: int) -> None:
    size = 1 + size_seed % len(entries)
    store = Store(entries)
    tree = ReferenceTree(entries)
    root = tree.mth(0, size)
    for index in range(size):
        getter = store.getter(size)
        proof = inclusion_proof(index, size, getter)
        assert getter.calls == (1 if size > 1 else 0)
        assert proof == tree.path(index, size)
        leaf = leaf_hash(entries[index])
        assert root_from_inclusion_proof(index, size, leaf, proof) == root
        verify_inclusion(index, size, leaf, proof, root)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entry_lists, size_seed=seeds)
@example(entries=LEAVES, size_seed=7)
@example(entries=[b""] * 300, size_seed=299)
@example(entries=[bytes([i % 256]) for i in range(300)], size_seed=256)
def test_every_consistency_proof_matches_reference(entries: list[bytes], size_seed: int) -> None:
    second = 1 + size_seed % len(entries)
    store = Store(entries)
    tree = ReferenceTree(entries)
    second_root = tree.mth(0, second)
    for first in range(second + 1):
        getter = store.getter(second)
        proof = consistency_proof(first, second, getter)
        assert getter.calls == (0 if first in (0, second) else 1)
        assert proof == tree.proof(first, second)
        verify_consistency(first, second, tree.mth(0, first), second_root, proof)


# -- hypothesis: every corruption fails, exactly as the RFC's algorithm says -------------


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=300),
    salt=st.binary(max_size=3),
    index_seed=seeds,
    bit=st.integers(min_value=0, max_value=255),
    other_seed=seeds,
)
@example(size=3, salt=b"", index_seed=0, bit=0, other_seed=4)  # size 4 has the same shape
@example(size=1, salt=b"", index_seed=0, bit=0, other_seed=0)
@example(size=8, salt=b"", index_seed=7, bit=255, other_seed=16)
def test_inclusion_rejects_every_corruption(
    size: int, salt: bytes, index_seed: int, bit: int, other_seed: int
) -> None:
    entries = distinct_entries(size, salt)
    store = Store(entries)
    index = index_seed % size
    leaf = leaf_hash(entries[index])
    root = store.ranges[size].root()
    proof = inclusion_proof(index, size, store.getter())
    verify_inclusion(index, size, leaf, proof, root)

    # Any flipped bit anywhere fails.
    for position in range(len(proof)):
        mutated = [*proof[:position], flip(proof[position], bit), *proof[position + 1 :]]
        assert rejects_inclusion(index, size, leaf, mutated, root)
        assert not ref.verify_inclusion(index, size, leaf, mutated, root)
    assert rejects_inclusion(index, size, flip(leaf, bit), proof, root)
    assert rejects_inclusion(index, size, leaf, proof, flip(root, bit))
    # A hash too many or too few fails.
    assert rejects_inclusion(index, size, leaf, [*proof, root], root)
    if proof:
        assert rejects_inclusion(index, size, leaf, proof[:-1], root)

    # Every other index fails: the left/right pattern of a path names one leaf.
    other_index = other_seed % (size + 3) - 1
    if other_index != index:
        assert rejects_inclusion(other_index, size, leaf, proof, root)
        assert not ref.verify_inclusion(other_index, size, leaf, proof, root)

    # Another size fails unless the RFC algorithm, run on symbols, performs the very
    # same hashing for it (then nothing can tell the sizes apart: the checkpoint binds
    # the size, not the proof).
    other_size = other_seed % (2 * size + 2)
    if other_size != size:
        honest = ref.rfc_inclusion_root(
            index, size, "leaf", symbols(len(proof)), combine_symbolically
        )
        assert honest is not None
        claimed = ref.rfc_inclusion_root(
            index, other_size, "leaf", symbols(len(proof)), combine_symbolically
        )
        accepted = not rejects_inclusion(index, other_size, leaf, proof, root)
        assert accepted == (claimed == honest)
        assert accepted == ref.verify_inclusion(index, other_size, leaf, proof, root)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=2, max_value=300),
    salt=st.binary(max_size=3),
    first_seed=seeds,
    bit=st.integers(min_value=0, max_value=255),
    other_seed=seeds,
)
@example(size=3, salt=b"", first_seed=1, bit=0, other_seed=4)  # (2, 4) has the same shape
@example(size=8, salt=b"", first_seed=6, bit=7, other_seed=7)
@example(size=2, salt=b"", first_seed=1, bit=0, other_seed=0)
def test_consistency_rejects_every_corruption(
    size: int, salt: bytes, first_seed: int, bit: int, other_seed: int
) -> None:
    entries = distinct_entries(size, salt)
    store = Store(entries)
    second = size
    first = 1 + first_seed % (second - 1)  # 0 < first < second: a real proof
    r1, r2 = store.ranges[first].root(), store.ranges[second].root()
    proof = consistency_proof(first, second, store.getter())
    assert proof
    verify_consistency(first, second, r1, r2, proof)

    for position in range(len(proof)):
        mutated = [*proof[:position], flip(proof[position], bit), *proof[position + 1 :]]
        assert rejects_consistency(first, second, r1, r2, mutated)
        assert not ref.verify_consistency(first, second, r1, r2, mutated)
    assert rejects_consistency(first, second, flip(r1, bit), r2, proof)
    assert rejects_consistency(first, second, r1, flip(r2, bit), proof)
    assert rejects_consistency(first, second, r2, r1, proof)
    assert rejects_consistency(first, second, r1, r2, [*proof, r2])
    assert rejects_consistency(first, second, r1, r2, proof[:-1])

    # Other sizes: accepted exactly when the RFC algorithm, run on symbols, computes the
    # same two roots. The first root is, symbolically, whatever the honest run folds
    # into ``fr``, so that is what stands in for it.
    syms = symbols(len(proof))
    honest = ref.rfc_consistency_roots(first, second, "first", syms, combine_symbolically)
    assert honest is not None
    for other_first, other_second in (
        (other_seed % (second + 2) - 1, second),
        (first, other_seed % (2 * second + 2)),
        (first - 1, second),
        (first + 1, second),
        (first, second + 1),
        (first, second - 1),
    ):
        if (other_first, other_second) == (first, second):
            continue
        claimed = ref.rfc_consistency_roots(
            other_first, other_second, honest[0], syms, combine_symbolically
        )
        accepted = not rejects_consistency(other_first, other_second, r1, r2, proof)
        assert accepted == (claimed == honest), (other_first, other_second)
        assert accepted == ref.verify_consistency(other_first, other_second, r1, r2, proof)


def test_proofs_do_not_bind_the_tree_size() -> None:
    """Documented RFC 9162 behaviour: the shape of a path, not the size, is verified."""
    entries = distinct_entries(4, b"")
    store = Store(entries)
    root3 = store.ranges[3].root()
    proof = inclusion_proof(0, 3, store.getter())
    verify_inclusion(0, 3, leaf_hash(entries[0]), proof, root3)
    verify_inclusion(0, 4, leaf_hash(entries[0]), proof, root3)  # same left/right shape
    with pytest.raises(ProofError):
        verify_inclusion(0, 5, leaf_hash(entries[0]), proof, root3)
    cproof = consistency_proof(2, 3, store.getter())
    verify_consistency(2, 4, store.ranges[2].root(), root3, cproof)


# -- cost: O(log n) stored nodes, one batch ------------------------------------------------


def _bound(size: int) -> int:
    return 2 * math.ceil(math.log2(size)) + 2


@pytest.mark.parametrize(
    "index", [0, 1, 2, 12345, 2**19 - 1, 2**19, 2**20 - 6, 2**20 - 5, 2**20 - 4]
)
def test_inclusion_proof_fetches_logarithmic_nodes(index: int) -> None:
    size = 2**20 - 3
    getter = FabricatingGetter(size)
    proof = inclusion_proof(index, size, getter)
    assert getter.calls == 1
    assert len(getter.requested) <= _bound(size)
    assert len(set(getter.requested)) == len(getter.requested)
    assert len(proof) <= math.ceil(math.log2(size))


@pytest.mark.parametrize("first", [1, 2, 3, 1000, 2**19, 2**19 + 1, 2**20 - 5, 2**20 - 4])
def test_consistency_proof_and_roots_fetch_logarithmic_nodes(first: int) -> None:
    size = 2**20 - 3
    getter = FabricatingGetter(size)
    consistency_proof(first, size, getter)
    assert getter.calls == 1
    assert len(getter.requested) <= _bound(size)
    for fetch in (lambda g: root_at(first, g), lambda g: CompactRange.from_nodes(first, g)):
        getter = FabricatingGetter(size)
        fetch(getter)
        assert getter.calls == 1
        assert len(getter.requested) <= math.ceil(math.log2(size)) + 1


@settings(max_examples=200, deadline=None)
@given(size=st.integers(min_value=2, max_value=2**48), a=seeds, b=seeds)
def test_any_proof_fetches_logarithmic_nodes(size: int, a: int, b: int) -> None:
    index = (a * 2**16 + b) % size
    getter = FabricatingGetter(size)
    inclusion_proof(index, size, getter)
    assert getter.calls == 1
    assert len(getter.requested) <= _bound(size)
    first = 1 + (a * 2**16 + b) % (size - 1)
    getter = FabricatingGetter(size)
    consistency_proof(first, size, getter)
    assert getter.calls == 1
    assert len(getter.requested) <= _bound(size)


# -- CompactRange and input validation -----------------------------------------------------


def test_compact_range_append_extend_copy() -> None:
    hashes = [leaf_hash(entry) for entry in LEAVES]
    one_by_one = CompactRange.empty()
    emitted = [node for value in hashes for node in one_by_one.append(value)]
    batched = CompactRange.empty()
    assert batched.extend(hashes) == emitted
    assert batched == one_by_one
    assert len(emitted) == 2 * len(hashes) - 1
    # Appending leaf 7 completes (0,7), (1,3), (2,1) and the root (3,0).
    assert [(level, index) for level, index, _ in emitted[-4:]] == [(0, 7), (1, 3), (2, 1), (3, 0)]

    snapshot = CompactRange(4, [NODE_HASHES[2][0]])
    clone = snapshot.copy()
    clone.append(hashes[4])
    assert snapshot.size == 4
    assert snapshot.root() == ROOTS[4]
    assert clone.root() == ROOTS[5]
    assert snapshot != clone
    assert CompactRange.empty().root() == EMPTY_ROOT
    assert "size=5" in repr(clone)
    assert (CompactRange.empty() == object()) is False


def test_invalid_requests_raise_invalid_input() -> None:
    store = Store(LEAVES)
    getter = store.getter()
    for call in (
        lambda: inclusion_proof(-1, 5, getter),
        lambda: inclusion_proof(5, 5, getter),
        lambda: inclusion_proof(0, 0, getter),
        lambda: consistency_proof(-1, 5, getter),
        lambda: consistency_proof(6, 5, getter),
        lambda: root_at(-1, getter),
        lambda: CompactRange.from_nodes(-1, getter),
        lambda: CompactRange(-1),
        lambda: CompactRange(3, [SOME_HASH]),
        lambda: CompactRange(1, [b"short"]),
        lambda: CompactRange.empty().append(b"raw data, not a hash"),
        lambda: root_of([b"raw"]),
    ):
        with pytest.raises(InvalidInput):
            call()


def test_misbehaving_getter_raises_storage_error() -> None:
    with pytest.raises(StorageError, match="returned 1 hashes for 2"):
        inclusion_proof(0, 3, lambda ids: [SOME_HASH])
    with pytest.raises(StorageError, match="malformed hash"):
        inclusion_proof(0, 3, lambda ids: [SOME_HASH, b"short"])
    with pytest.raises(StorageError):
        root_at(3, lambda ids: [SOME_HASH] * (len(ids) + 1))


def test_root_of_is_fast_and_matches_compact_range() -> None:
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(20_000)]
    edge = CompactRange.empty()
    edge.extend(hashes)
    assert root_of(hashes) == edge.root()
    assert root_of([]) == EMPTY_ROOT
