"""Which upstream serves a request.

Candidates are the upstreams in rotation that have the block the request needs (never
one whose head is below it) and, for archive calls, those tagged ``archive`` when any
is. Among candidates the lowest ``priority`` tier with compute-unit budget left wins (a
managed provider's quota is spent only when the team's own nodes cannot serve); inside
the tier, power-of-two-choices: two picks weighted by ``weight``, the one with the lower
EWMA latency times (outstanding + 1) is used. P2C keeps load spread without herding on
the single fastest node, and reacts to a slowing node within a few requests.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from opsledger.gateway.upstream import Upstream

__all__ = ["Router"]


class Router:
    def __init__(self, upstreams: Sequence[Upstream], *, rng: random.Random | None = None) -> None:
        self.upstreams = list(upstreams)
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not security
        self.has_archive = any("archive" in u.config.tags for u in self.upstreams)

    def candidates(
        self,
        *,
        min_head: int | None = None,
        archive: bool = False,
        exclude: Collection[str] = (),
        cost: float = 0.0,
    ) -> list[Upstream]:
        """In-rotation upstreams able to serve, best priority tier first."""
        pool = [u for u in self.upstreams if u.in_rotation and u.name not in exclude]
        if min_head is not None:
            pool = [u for u in pool if u.head >= min_head]
        if archive and self.has_archive:
            tagged = [u for u in pool if "archive" in u.config.tags]
            pool = tagged or pool
        if cost > 0:
            # A provider's quota is respected: an upstream without budget left is not
            # used at all (the others, or an error, rather than an overage bill).
            pool = [u for u in pool if u.budget is None or u.budget.available(cost)]
        if not pool:
            return []
        best = min(u.config.priority for u in pool)
        return [u for u in pool if u.config.priority == best]

    def choose(
        self,
        *,
        min_head: int | None = None,
        archive: bool = False,
        exclude: Collection[str] = (),
        cost: float = 0.0,
    ) -> Upstream | None:
        if len(self.upstreams) == 2 and not (archive and self.has_archive):
            # The same choice as below for the common two-upstream chain, without
            # building candidate lists: this runs on every request that goes upstream.
            a, b = self.upstreams
            ok_a = _eligible(a, min_head, exclude, cost)
            ok_b = _eligible(b, min_head, exclude, cost)
            if not (ok_a and ok_b):
                return a if ok_a else b if ok_b else None
            if a.config.priority != b.config.priority:
                return a if a.config.priority < b.config.priority else b
            return self._pick_of_two(a, b)
        pool = self.candidates(min_head=min_head, archive=archive, exclude=exclude, cost=cost)
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        if len(pool) == 2:
            return self._pick_of_two(*pool)
        weights = [max(u.config.weight, 1e-9) for u in pool]
        first, second = self._rng.choices(pool, weights=weights, k=2)
        if first is second:
            others = [u for u in pool if u is not first]
            second = self._rng.choices(
                others, weights=[max(u.config.weight, 1e-9) for u in others]
            )[0]
        return min((first, second), key=_score)

    def _pick_of_two(self, a: Upstream, b: Upstream) -> Upstream:
        """The general case's choice for a pool of two (two distinct weighted draws of
        a pair are always the pair; a tie goes to the weighted first draw), without
        building weight lists."""
        score_a, score_b = _score(a), _score(b)
        if score_a != score_b:
            return a if score_a < score_b else b
        weight_a, weight_b = max(a.config.weight, 1e-9), max(b.config.weight, 1e-9)
        return a if self._rng.random() * (weight_a + weight_b) < weight_a else b


def _eligible(
    upstream: Upstream, min_head: int | None, exclude: Collection[str], cost: float
) -> bool:
    """What ``Router.candidates`` filters on, for one upstream."""
    return (
        upstream.in_rotation
        and (min_head is None or upstream.head >= min_head)
        and upstream.name not in exclude
        and (cost <= 0 or upstream.budget is None or upstream.budget.available(cost))
    )


def _score(upstream: Upstream) -> float:
    return upstream.ewma_ms * (upstream.outstanding + 1)
