"""Sensitivity: prune one group at a time at several ratios and measure the damage.

The measure is passed in (``model -> score``, higher is better, e.g. output cosine or accuracy),
so this module stays in the passes layer. ``suggest`` turns the curves into per-group ratios
(``overrides`` for the prune pass): the largest ratio whose score stays above a floor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx

from onnxopt.prune.analyze import analyze
from onnxopt.prune.apply import cut, guard
from onnxopt.prune.importance import class_scores
from onnxopt.prune.pruner import estimate_macs
from onnxopt.prune.ratios import Budget, choose


def curves(model: onnx.ModelProto, ratios: Sequence[float], measure: Callable[[onnx.ModelProto], float],
           shapes: Mapping[str, Sequence[int]] | None = None, criterion: str = "l2",
           progress: Callable[[str, float], None] | None = None, data: object = None) -> list[dict]:
    """One row per prunable group: its producers, MACs share, and (ratio, MACs drop, score) points.

    ``data`` is the calibration data the ``activation`` criterion scores channels on."""
    base = analyze(model, shapes)
    scores = class_scores(base, criterion, "mean", data)
    total = sum(base.node_macs.values()) or 1
    rows = []
    prunable = [g for g in base.groups if g.prunable]
    for index, group in enumerate(prunable):
        if progress:
            progress(group.producers[0], index / max(len(prunable), 1))
        points = []
        for ratio in ratios:
            result = analyze(model, shapes)  # the cut consumes the graph: a fresh one per point
            removed = guard(result, choose([result.groups[group.gid]], scores, Budget(ratio)))
            if not removed:
                continue
            drop = 1 - estimate_macs(result, removed) / total
            points.append({"ratio": ratio, "macs_drop": round(drop, 4),
                           "score": round(float(measure(cut(result, removed, like=model))), 6)})
        rows.append({"group": group.gid, "producers": group.producers, "channels": group.channels,
                     "macs_share": round(group.macs / total, 4), "points": points})
    return rows


def suggest(rows: list[dict], min_score: float) -> list[str]:
    """Per-group ``overrides`` (``producer=ratio``): the largest tried ratio still scoring >= ``min_score``."""
    overrides = []
    for row in rows:
        good = [p["ratio"] for p in row["points"] if p["score"] >= min_score]
        overrides.append(f"{row['producers'][0]}={max(good) if good else 0.0}")
    return overrides
