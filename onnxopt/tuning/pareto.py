"""The Pareto front, computed here (nevergrad 1.0.12's ``pareto_front(subset=...)`` raises with numpy 2,
and its front can hold points outside the reference bounds).

Every objective is minimized; a point is on the front when no other point is at least as good in
every objective and better in one.

Example::

    front_indices([(1.0, 5.0), (0.5, 6.0), (0.7, 7.0)])   # [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order; exact duplicates keep the first one."""
    kept: list[int] = []
    for i, p in enumerate(points):
        if any(dominates(q, p) for j, q in enumerate(points) if j != i):
            continue
        if any(tuple(points[k]) == tuple(p) for k in kept):
            continue
        kept.append(i)
    return kept
