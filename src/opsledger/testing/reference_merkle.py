"""A naive RFC 9162 Merkle tree, written straight from the RFC, to test ``core.merkle``.

Construction follows the recursive definitions of RFC 9162 section 2.1 over the list of
entries ``D[0:n]`` (raw leaf data, not hashes): MTH (2.1.1), PATH (2.1.3.1) and
PROOF/SUBPROOF (2.1.4.1). Verification follows the step lists of 2.1.3.2 and 2.1.4.2,
written generically over the hash combiner so a test can run them *symbolically* (with
a combiner that builds expression trees) to see exactly which inputs a verifier reads.

None of it is meant to be fast or clever; the one concession is that ``ReferenceTree``
memoises MTH per subrange, which changes no result and lets property tests ask for
thousands of proofs. ``core.merkle`` must not import this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "ReferenceTree",
    "mth",
    "path",
    "proof",
    "rfc_consistency_roots",
    "rfc_inclusion_root",
    "verify_consistency",
    "verify_inclusion",
]

T = TypeVar("T")


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class ReferenceTree:
    """RFC 9162 MTH, PATH and PROOF over fixed entries; subtrees are ranges of D."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.entries = tuple(entries)
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, start: int = 0, end: int | None = None) -> bytes:
        """MTH(D[start:end])."""
        end = len(self.entries) if end is None else end
        key = (start, end)
        if key not in self._mth:
            self._mth[key] = self._compute_mth(start, end)
        return self._mth[key]

    def _compute_mth(self, start: int, end: int) -> bytes:
        n = end - start
        # MTH({}) = SHA-256().
        if n == 0:
            return _hash(b"")
        # MTH({d(0)}) = SHA-256(0x00 || d(0)).
        if n == 1:
            return _hash(b"\x00" + self.entries[start])
        # MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])).
        k = _largest_power_of_two_below(n)
        return _hash(b"\x01" + self.mth(start, start + k) + self.mth(start + k, end))

    def path(self, m: int, n: int) -> list[bytes]:
        """PATH(m, D[0:n]) for 0 <= m < n."""
        if not 0 <= m < n <= len(self.entries):
            raise ValueError(f"PATH({m}, D[{n}]) is undefined")
        return self._path(m, 0, n)

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        # PATH(0, {d(0)}) = {}.
        if n == 1:
            return []
        k = _largest_power_of_two_below(n)
        # m < k: PATH(m, D[0:k]) : MTH(D[k:n]).
        if m < k:
            return [*self._path(m, start, start + k), self.mth(start + k, end)]
        # m >= k: PATH(m - k, D[k:n]) : MTH(D[0:k]).
        return [*self._path(m - k, start + k, end), self.mth(start, start + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[0:n]) = SUBPROOF(m, D[0:n], true) for 0 < m <= n; {} for m == 0."""
        if not 0 <= m <= n <= len(self.entries):
            raise ValueError(f"PROOF({m}, D[{n}]) is undefined")
        if m == 0:
            return []  # the RFC leaves it out; the empty tree needs no proof
        return self._subproof(m, 0, n, b=True)

    def _subproof(self, m: int, start: int, end: int, *, b: bool) -> list[bytes]:
        n = end - start
        # SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}.
        if m == n:
            return [] if b else [self.mth(start, end)]
        k = _largest_power_of_two_below(n)
        # m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]).
        if m <= k:
            return [*self._subproof(m, start, start + k, b=b), self.mth(start + k, end)]
        # m > k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
        return [*self._subproof(m - k, start + k, end, b=False), self.mth(start, start + k)]


def mth(entries: Sequence[bytes]) -> bytes:
    """MTH(D) of raw entries."""
    return ReferenceTree(entries).mth()


def path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D) over all of ``entries``."""
    return ReferenceTree(entries).path(m, len(entries))


def proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D) over all of ``entries``."""
    return ReferenceTree(entries).proof(m, len(entries))


def _node(left: bytes, right: bytes) -> bytes:
    return _hash(b"\x01" + left + right)


def rfc_inclusion_root(
    index: int, size: int, leaf: T, inclusion_path: Sequence[T], combine: Callable[[T, T], T]
) -> T | None:
    """RFC 9162 2.1.3.2 steps 1-5 up to the final root comparison.

    Returns the computed root ``r``, or None where the RFC says "stop and fail".
    ``combine(left, right)`` stands for HASH(0x01 || left || right).
    """
    # 1.
    if index < 0 or index >= size:
        return None
    # 2.
    fn, sn = index, size - 1
    # 3.
    r = leaf
    # 4.
    for p in inclusion_path:
        # a.
        if sn == 0:
            return None
        # b.
        if fn & 1 == 1 or fn == sn:
            r = combine(p, r)
            if fn & 1 == 0:
                while not (fn & 1 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = combine(r, p)
        # c.
        fn >>= 1
        sn >>= 1
    # 5. (sn must be 0; the caller compares r with the root)
    if sn != 0:
        return None
    return r


def rfc_consistency_roots(
    first: int,
    second: int,
    first_hash: T,
    consistency_path: Sequence[T],
    combine: Callable[[T, T], T],
) -> tuple[T, T] | None:
    """RFC 9162 2.1.4.2 steps 1-7 up to the final root comparisons, for 0 < first < second.

    Returns ``(fr, sr)`` to compare with first_hash and second_hash, or None where the
    RFC says "stop and fail".
    """
    if not 0 < first < second:
        return None
    # 1.
    if not consistency_path:
        return None
    path_ = list(consistency_path)
    # 2.
    if first & (first - 1) == 0:
        path_.insert(0, first_hash)
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    while fn & 1 == 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path_[0]
    # 6.
    for c in path_[1:]:
        # a.
        if sn == 0:
            return None
        # b.
        if fn & 1 == 1 or fn == sn:
            fr = combine(c, fr)
            sr = combine(c, sr)
            if fn & 1 == 0:
                while not (fn & 1 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = combine(sr, c)
        # c.
        fn >>= 1
        sn >>= 1
    # 7. (sn must be 0; the caller compares fr and sr with the roots)
    if sn != 0:
        return None
    return fr, sr


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, inclusion_path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2 in full: True when the path leads from the leaf to ``root``."""
    return rfc_inclusion_root(index, size, leaf_hash, inclusion_path, _node) == root


def verify_consistency(
    first: int,
    second: int,
    first_hash: bytes,
    second_hash: bytes,
    consistency_path: Sequence[bytes],
) -> bool:
    """RFC 9162 2.1.4.2 in full, for 0 < first < second."""
    roots = rfc_consistency_roots(first, second, first_hash, consistency_path, _node)
    return roots is not None and roots == (first_hash, second_hash)
