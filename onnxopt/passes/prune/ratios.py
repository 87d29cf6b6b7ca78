"""How many classes each group loses, and which: uniform per group, or one global threshold.

``uniform``: every group loses ``ratio`` of its channels (its lowest-scored free classes).
``global``: scores are divided by their group's mean and one threshold is drawn over all groups,
so groups with many weak channels lose more. Both honour ``min_channels``, ``round_to`` (kept
counts rounded *up* to a multiple; only in groups of at least ``round_from`` channels), per-pattern
``overrides`` and ``ignore``. :func:`auto_rounding` picks ``round_to`` for a target when the user
did not: kernels run channels in blocks (onnxruntime's CPU convs in NCHWc blocks of 8 with AVX2,
16 with AVX-512; tensor cores in 8s), and a count just past a block costs a whole block.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np

from onnxopt.errors import ConfigError
from onnxopt.passes.prune.groups import Group

MAX_GLOBAL_RATIO = 0.9  # a global threshold never empties a group below this much of it
DEFAULT_BLOCK = 8  # AVX2 NCHWc block and fp16 tensor-core multiple: the common divisor of most targets
# automatic rounding leaves groups narrower than this many blocks exact: rounding a 16-channel group
# up to 8s would cancel most of its cut, and narrow layers hold little of the time
AUTO_ROUND_MIN_BLOCKS = 8


@dataclass(frozen=True)
class Budget:
    ratio: float
    strategy: str = "uniform"
    round_to: int = 1
    min_channels: int = 1
    overrides: tuple[str, ...] = ()  # "pattern=ratio"
    ignore: tuple[str, ...] = ()
    round_from: int = 0  # groups narrower than this keep their exact count


def auto_rounding(round_to: int | None, profile: object = None) -> tuple[int, int]:
    """``(round_to, round_from)``: the user's value applies to every group; without one, the target's
    channel block (a profile's ``accelerates.channel_block`` when it declares one, else 8) applies to groups of at
    least ``AUTO_ROUND_MIN_BLOCKS`` blocks."""
    if round_to is not None:
        return round_to, 0
    block = int(getattr(getattr(profile, "accelerates", None), "channel_block", None) or DEFAULT_BLOCK)
    return block, block * AUTO_ROUND_MIN_BLOCKS


def parse_overrides(items: tuple[str, ...]) -> list[tuple[str, float]]:
    parsed = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if not sep or not pattern or not 0.0 <= ratio < 1.0:
            raise ConfigError(f"bad override {item!r}", "write NODE_PATTERN=RATIO with 0 <= RATIO < 1, e.g. conv1*=0.5")
        parsed.append((pattern, ratio))
    return parsed


def matches(group: Group, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in group.producers)


def _kept(n: int, remove: int, group: Group, budget: Budget) -> int:
    kept = max(n - remove, budget.min_channels, len(group.pinned))
    if budget.round_to > 1 and n >= budget.round_from:
        kept = math.ceil(kept / budget.round_to) * budget.round_to
    return min(kept, n)


def _lowest(group: Group, scores: dict[int, float], count: int) -> list[int]:
    pinned = set(group.pinned)
    free = sorted((c for c in group.classes if c not in pinned), key=lambda c: (scores.get(c, 0.0), c))
    return free[:max(count, 0)]


def choose(groups: list[Group], scores: dict[int, float], budget: Budget) -> set[int]:
    """The classes to remove."""
    if budget.strategy not in ("uniform", "global"):
        raise ConfigError(f"unknown strategy {budget.strategy!r}", "uniform, global or sensitivity")
    overrides = parse_overrides(budget.overrides)
    removed: set[int] = set()
    pool: list[Group] = []
    for group in groups:
        if not group.prunable or any(matches(group, p) for p in budget.ignore):
            continue
        ratio = next((r for p, r in overrides if matches(group, p)), None)
        if ratio is None and budget.strategy == "global":
            pool.append(group)
            continue
        ratio = budget.ratio if ratio is None else ratio
        n = len(group.classes)
        removed |= set(_lowest(group, scores, n - _kept(n, math.floor(ratio * n + 1e-9), group, budget)))
    if pool:
        removed |= _global(pool, scores, budget)
    return removed


def _global(pool: list[Group], scores: dict[int, float], budget: Budget) -> set[int]:
    candidates = []
    for group in pool:
        values = np.array([scores.get(c, 0.0) for c in group.classes])
        mean = float(values.mean()) or 1.0
        pinned = set(group.pinned)
        candidates += [(scores.get(c, 0.0) / mean, group.gid, c) for c in group.classes if c not in pinned]
    total = sum(len(g.classes) for g in pool)
    target = math.floor(budget.ratio * total + 1e-9)
    limit = {g.gid: len(g.classes) - max(budget.min_channels, len(g.pinned),
                                         math.ceil(len(g.classes) * (1 - MAX_GLOBAL_RATIO))) for g in pool}
    taken: dict[int, list[int]] = {g.gid: [] for g in pool}
    count = 0
    for _, gid, c in sorted(candidates):
        if count >= target:
            break
        if len(taken[gid]) < limit[gid]:
            taken[gid].append(c)
            count += 1
    removed: set[int] = set()
    for group in pool:
        n = len(group.classes)
        keep = _kept(n, len(taken[group.gid]), group, budget)
        removed |= set(taken[group.gid][: n - keep])
    return removed
