"""Find the fewest nodes to keep in float (int8 or fp16 fallback) so that a target holds.

Nodes come ranked most-sensitive first (by onnxruntime's qdq_loss_debug noise, or by measuring
groups); we bisect on how many of the top-ranked nodes stay in float. That is log2(n) builds and
evaluations instead of n for a one-node-at-a-time search (onnxconverter-common's
auto_mixed_precision, Intel Neural Compressor's fallback loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from onnxopt.errors import PassError
from onnxopt.targets import Judge


@dataclass
class SearchResult:
    model: onnx.ModelProto
    kept: list[str]
    scores: dict
    trail: list[dict] = field(default_factory=list)  # every (kept count, scores) tried
    calibration: list[dict] = field(default_factory=list)  # every calibration scored with all nodes in int8


def bisect_fallback(ranked: Sequence[str], build: Callable[[set[str]], onnx.ModelProto], judge: Judge,
                    what: str, seen: dict | None = None, where: str = "in float") -> SearchResult:
    """Smallest k such that ``build(set(ranked[:k]))`` meets the judge's target. ``seen`` is shared by
    searches over several orders of the same nodes: they all try the empty and the full set, which
    are then built and scored once (only those two are kept: a model each)."""
    trail: list[dict] = []
    seen = {} if seen is None else seen

    def attempt(k: int) -> tuple[onnx.ModelProto, dict, bool]:
        key = frozenset(ranked[:k])
        if key in seen:
            model, scores, ok = seen[key]
        else:
            model = build(set(key))
            scores = judge.score(model)
            ok = judge.holds(scores)
            if k in (0, len(ranked)):
                seen[key] = (model, scores, ok)
        trail.append({"kept_in_float": k, **scores, "meets_target": ok})
        return model, scores, ok

    model, scores, ok = attempt(0)
    if ok:
        return SearchResult(model, [], scores, trail)
    best = attempt(len(ranked))
    if not best[2]:
        raise PassError(f"{what}: the target is not met even with all {len(ranked)} candidate node(s) {where} "
                        f"({judge.describe(best[1])})", "loosen the target or exclude other op types")
    lo, hi = 0, len(ranked)  # lo fails, hi holds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate = attempt(mid)
        if candidate[2]:
            hi, best = mid, candidate
        else:
            lo = mid
    return SearchResult(best[0], list(ranked[:hi]), best[1], trail)
