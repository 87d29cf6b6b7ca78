"""Sensitivity: prune one group at a time at several ratios and measure the damage; spend a budget.

The measure is passed in (``model -> score``, higher is better, e.g. output cosine or accuracy),
so this module stays in the passes layer. ``suggest`` turns the curves into per-group ratios
(``overrides`` for the prune pass): the largest ratio whose score stays above a floor.
``allocate`` is ``strategy=sensitivity``: it spends a channel or MACs budget where the curves say
it costs least, one greedy step at a time (the step with the least damage per channel or MAC
removed), the way a global budget is split over layers from a sensitivity scan (He et al., AMC,
and NNI's sensitivity pruner do the same from trained curves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxopt.errors import ConfigError
from onnxopt.passes.prune.analyze import Result, analyze
from onnxopt.passes.prune.apply import cut, estimate_macs, guard, kept_channels, kept_outputs
from onnxopt.passes.prune.importance import class_scores
from onnxopt.passes.prune.ratios import Budget, choose, matches, parse_overrides

ALLOCATION_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
ALLOCATION_SAMPLES = 4  # calibration samples each point is scored on
ALLOCATION_REFIT_SAMPLES = 8  # and re-fitted on: few, since every point of every group runs a re-fit


@dataclass
class Point:
    ratio: float
    removed: frozenset
    macs_drop: float
    score: float


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """The ratios to try per group, each in (0, 1); a ``ConfigError`` otherwise."""
    values = [float(r) for r in ratios]
    if not values or not all(0 < r < 1 for r in values):
        raise ConfigError(f"bad ratios {values}", "ratios must lie in (0, 1), e.g. 0.1,0.3,0.5")
    return values


def check_macs_budget(budget: float | None) -> float | None:
    """A MACs fraction to remove, in (0, 1), or None; a ``ConfigError`` otherwise."""
    if budget is not None and not 0 < budget < 1:
        raise ConfigError(f"bad macs_budget {budget}", "a fraction of the MACs in (0, 1), e.g. 0.4")
    return budget


def curves(model: onnx.ModelProto, ratios: Sequence[float], measure: Callable[[onnx.ModelProto], float],
           shapes: Mapping[str, Sequence[int]] | None = None, criterion: str = "l2",
           progress: Callable[[str, float], None] | None = None, data: object = None) -> list[dict]:
    """One row per prunable group: its producers, MACs share, and (ratio, MACs drop, score) points.

    ``data`` is the calibration data the data-driven criteria score channels on; with it, each cut
    group's mean shift moves into the biases, as the prune pass does."""
    from onnxopt.passes.prune.activations import Calibration

    ratios = check_ratios(ratios)
    calib = Calibration.of(data)
    base = analyze(model, shapes)
    scores = class_scores(base, criterion, "mean", calib)
    total = sum(base.node_macs.values()) or 1
    rows = []
    for index, group in enumerate(g for g in base.groups if g.prunable):
        if progress:
            progress(group.producers[0], index / max(sum(g.prunable for g in base.groups), 1))
        points = _points(model, shapes, group.gid, ratios, Budget(0.0), scores, measure, calib)
        rows.append({"group": group.gid, "producers": group.producers, "channels": group.channels,
                     "macs_share": round(group.macs / total, 4),
                     "points": [{"ratio": p.ratio, "macs_drop": round(p.macs_drop, 4), "score": round(p.score, 6)}
                                for p in points]})
    return rows


def _points(model, shapes, gid: int, ratios: Sequence[float], budget: Budget, scores: dict[int, float],
            measure: Callable[[onnx.ModelProto], float], calib=None, refit_on=None) -> list[Point]:
    """The group pruned alone at each ratio (rounding and minimums of ``budget``); with ``calib``, the
    mean shift is moved into the biases first, as the prune pass does; with ``refit_on`` (data), the
    cut consumers are also re-fitted (one run of the unpruned model: fitted on its kept inputs)."""
    from dataclasses import replace

    from onnxopt.passes.prune.recover import recover
    from onnxopt.passes.prune.shift import apply_shifts, mean_shifts

    points, seen = [], set()
    for ratio in ratios:
        result = analyze(model, shapes)  # the cut consumes the graph: a fresh one per point
        removed = frozenset(guard(result, choose([result.groups[gid]], scores, replace(budget, ratio=ratio,
                                                                                      strategy="uniform"))))
        if not removed or removed in seen:
            continue
        seen.add(removed)
        drop = 1 - estimate_macs(result, removed) / (sum(result.node_macs.values()) or 1)
        shifts = mean_shifts(result, removed, calib.stats(result)) if calib is not None else {}
        kept = kept_outputs(result, removed)
        kept_in = kept_channels(result, removed) if refit_on is not None else None
        pruned, _ = apply_shifts(cut(result, removed, like=model), shifts, kept)
        if refit_on is not None:
            pruned, _ = recover(model, pruned, refit_on, kept, kept_in=kept_in)
        points.append(Point(ratio, removed, drop, float(measure(pruned))))
    return points


def suggest(rows: list[dict], min_score: float) -> list[str]:
    """Per-group ``overrides`` (``producer=ratio``): the largest tried ratio still scoring >= ``min_score``."""
    overrides = []
    for row in rows:
        good = [p["ratio"] for p in row["points"] if p["score"] >= min_score]
        overrides.append(f"{row['producers'][0]}={max(good) if good else 0.0}")
    return overrides


def for_macs_budget(rows: list[dict], target: float) -> tuple[list[str], float]:
    """Per-group ``overrides`` spending a MACs budget (fraction) where the :func:`curves` rows say it
    costs least, and the MACs drop they add up to. Per-group drops add up only approximately (a
    layer between two cut groups loses both ways); ``prune:strategy=sensitivity`` measures the real one."""
    check_macs_budget(target)
    points = {row["group"]: [Point(p["ratio"], frozenset(), p["macs_drop"], p["score"]) for p in row["points"]]
              for row in rows}
    current: dict[int, Point | None] = {gid: None for gid in points}
    while sum(p.macs_drop for p in current.values() if p is not None) < target:
        step = _cheapest_step(points, current, by_macs=True)
        if step is None:
            break
        current[step[0]] = step[1]
    names = {row["group"]: row["producers"][0] for row in rows}
    overrides = [f"{names[gid]}={p.ratio}" for gid, p in current.items() if p is not None]
    return overrides, sum(p.macs_drop for p in current.values() if p is not None)


def allocate(result: Result, scores: dict[int, float], budget: Budget, model: onnx.ModelProto, shapes,
             calib, target_macs: float | None = None, refit: bool = False) -> tuple[set[int], list[dict]]:
    """``strategy=sensitivity``: remove ``budget.ratio`` of the channels of the free groups (or, with
    ``target_macs``, that fraction of the MACs), choosing per group from its measured curve.

    Groups named by ``overrides`` take their given ratio and ``ignore`` keeps groups whole; the rest
    form the pool. Damage is ``1 - score`` of each group pruned alone (output cosine on
    :data:`ALLOCATION_SAMPLES` calibration samples, mean shift compensated and, with ``refit``, its
    consumers re-fitted on :data:`ALLOCATION_REFIT_SAMPLES`), taken as additive."""
    from onnxopt.passes.prune.recover import output_cosine, reference_outputs

    if calib is None:
        raise ConfigError("strategy=sensitivity needs calibration data", "pass calib=... / --calib")
    overrides = parse_overrides(budget.overrides)
    fixed: set[int] = set()
    pool = []
    for group in result.groups:
        if not group.prunable or any(matches(group, p) for p in budget.ignore):
            continue
        ratio = next((r for p, r in overrides if matches(group, p)), None)
        if ratio is None:
            pool.append(group)
        else:
            fixed |= choose([group], scores, Budget(ratio, "uniform", budget.round_to, budget.min_channels,
                                                     round_from=budget.round_from))
    probe = calib.data.take(min(ALLOCATION_SAMPLES, len(calib.data)))
    expected = reference_outputs(model, probe)

    def measure(candidate: onnx.ModelProto) -> float:
        return output_cosine(model, candidate, probe, expected)

    refit_on = calib.data.take(min(ALLOCATION_REFIT_SAMPLES, len(calib.data))) if refit else None
    curves_by_gid = {g.gid: _points(model, shapes, g.gid, ALLOCATION_RATIOS, budget, scores, measure, calib,
                                    refit_on) for g in pool}
    total_macs = sum(result.node_macs.values()) or 1
    pool_channels = sum(len(g.classes) for g in pool)
    current: dict[int, Point | None] = {g.gid: None for g in pool}

    def reached() -> bool:
        removed = fixed.union(*(p.removed for p in current.values() if p is not None))
        if target_macs is not None:
            return 1 - estimate_macs(result, removed) / total_macs >= target_macs
        return sum(len(p.removed) for p in current.values() if p is not None) >= \
            math.floor(budget.ratio * pool_channels + 1e-9)

    while not reached():
        step = _cheapest_step(curves_by_gid, current, by_macs=target_macs is not None)
        if step is None:
            break
        current[step[0]] = step[1]
    chosen = fixed.union(*(p.removed for p in current.values() if p is not None))
    trail = [{"producers": g.producers[:2], "ratio": current[g.gid].ratio if current[g.gid] else 0.0,
              "score_alone": round(current[g.gid].score, 4) if current[g.gid] else 1.0,
              "curve": [(p.ratio, round(p.score, 4)) for p in curves_by_gid[g.gid]]} for g in pool]
    return guard(result, chosen), trail


def _cheapest_step(curves_by_gid: dict[int, list[Point]], current: dict[int, Point | None],
                   by_macs: bool) -> tuple[int, Point] | None:
    """The (group, point) move with the least added damage per channel (or MAC) removed."""
    best = None
    for gid, points in curves_by_gid.items():
        now = current[gid]
        damage_now = 0.0 if now is None else max(1 - now.score, 0.0)
        amount_now = 0.0 if now is None else (now.macs_drop if by_macs else len(now.removed))
        for point in points:
            amount = point.macs_drop if by_macs else len(point.removed)
            if amount <= amount_now:
                continue
            cost = (max(1 - point.score, 0.0) - damage_now) / (amount - amount_now)
            if best is None or cost < best[0]:
                best = (cost, gid, point)
    return None if best is None else (best[1], best[2])
