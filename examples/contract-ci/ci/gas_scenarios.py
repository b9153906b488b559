"""The transactions the gas check sends, in order, on a fresh chain.

Gas depends on state (writing a zero storage slot costs more than changing a non-zero one),
so the scenario is a fixed sequence from a fresh deploy: every run measures the same
thing. Each ``Step`` is one real transaction; the ones with ``measure=True`` give the
function's figure (``gasUsed`` from its receipt, intrinsic cost included, as a user pays
it). Every state-changing function of the ABI needs a measured step: the check fails when
one is missing, so a new function cannot slip past the snapshot.

To adapt the example to another contract, rewrite ``STEPS`` (and ``CONSTRUCTOR_ARGS`` in
``chain.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

UNIT = 10**18


@dataclass(frozen=True)
class Step:
    function: str
    args: Callable[[Sequence[str]], tuple[Any, ...]]
    """Arguments, given the node's accounts (``accounts[0]`` deployed the contract)."""
    sender: int = 0
    """Index of the sending account."""
    measure: bool = True


STEPS: tuple[Step, ...] = (
    # mint to a holder who has no balance yet: the common first mint.
    Step("mint", lambda a: (a[1], 100 * UNIT)),
    # transfer to an address that holds nothing yet (zero -> non-zero slot).
    Step("transfer", lambda a: (a[2], 10 * UNIT), sender=1),
    Step("approve", lambda a: (a[3], 20 * UNIT), sender=1),
    Step("transferFrom", lambda a: (a[1], a[4], 5 * UNIT), sender=3),
    Step("burn", lambda a: (UNIT,), sender=1),
)
