"""Importance scorers: one score per removal class, from weights or calibration activations.

A scorer is ``(result, data) -> {class: [score per slot]}`` registered by name with
:func:`scorer`; the per-slot scores of a class (its producer's filters, its consumers' input
columns, its BN scales...) are combined by ``aggregate`` (sum / mean / max). Every slot is divided
by its own mean first, so a wide layer does not outvote a narrow one inside a residual group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxopt.errors import ConfigError
from onnxopt.passes.graph import const_value
from onnxopt.passes.prune.analyze import Result

Scores = dict[int, list[float]]
Scorer = Callable[[Result, object], Scores]
SCORERS: dict[str, Scorer] = {}
AGGREGATES = {"sum": np.sum, "mean": np.mean, "max": np.max}


def scorer(name: str) -> Callable[[Scorer], Scorer]:
    def deco(fn: Scorer) -> Scorer:
        if name in SCORERS:
            raise ValueError(f"importance scorer {name!r} is already registered")
        SCORERS[name] = fn
        return fn

    return deco


def _add_slot(scores: Scores, classes: np.ndarray, atoms: np.ndarray, per_position: np.ndarray, squared: bool) -> None:
    """Sum a slot's per-position values by class (root of the sum for l2), normalized by the slot mean."""
    valid = atoms >= 0
    if not valid.any():
        return
    cls = classes[atoms[valid]]
    uniq, inverse = np.unique(cls, return_inverse=True)
    sums = np.bincount(inverse, weights=per_position[valid].astype(np.float64))
    if squared:
        sums = np.sqrt(sums)
    mean = float(sums.mean()) or 1.0
    for c, value in zip(uniq.tolist(), (sums / mean).tolist(), strict=True):
        scores.setdefault(c, []).append(value)


def _weight_scores(result: Result, roles: tuple[str, ...], power: int) -> Scores:
    scores: Scores = {}
    for cut in result.an.cuts:
        if cut.role not in roles:
            continue
        value = const_value(cut.node.inputs[cut.index])
        if value is None or value.dtype.kind != "f":
            continue
        rows = np.moveaxis(np.asarray(value, dtype=np.float64), cut.axis, 0).reshape(value.shape[cut.axis], -1)
        per_position = np.abs(rows).sum(axis=1) if power == 1 else np.square(rows).sum(axis=1)
        _add_slot(scores, result.classes, cut.atoms, per_position, squared=power == 2)
    return scores


@scorer("l1")
def l1(result: Result, data: object) -> Scores:
    """L1 norm of the filters that produce a channel and the columns that read it."""
    return _weight_scores(result, ("out", "in"), 1)


@scorer("l2")
def l2(result: Result, data: object) -> Scores:
    return _weight_scores(result, ("out", "in"), 2)


@scorer("bn_scale")
def bn_scale(result: Result, data: object) -> Scores:
    """|gamma| of the BatchNormalization on the channel; classes without BN fall back to L2."""
    scores = _weight_scores(result, ("bn",), 1)
    fallback = l2(result, data)
    return {c: scores.get(c, v) for c, v in fallback.items()}


@scorer("activation")
def activation(result: Result, data: object) -> Scores:
    """Mean |activation| of each channel on calibration data, where consumers read it."""
    if data is None:
        raise ConfigError("criterion 'activation' needs calibration data", "pass calib=... / --calib")
    from onnxopt.passes.prune.activations import Calibration

    scores: Scores = {}
    for item in Calibration.of(data).stats(result).values():
        _add_slot(scores, result.classes, item.atoms, item.mean_abs, squared=False)
    fallback = l2(result, data)
    return {c: scores.get(c, v) for c, v in fallback.items()}


@scorer("variance")
def variance(result: Result, data: object) -> Scores:
    """What a channel adds to its consumers' outputs beyond its mean: ``Var(x_c) * ||W[:, c]||^2``,
    summed over every layer that reads it (its mean moves into their biases when it is cut, see
    :mod:`onnxopt.passes.prune.shift`). Channels only depthwise convs read are scored where a dense layer
    reads their output, as their group's classes are the same."""
    if data is None:
        raise ConfigError("criterion 'variance' needs calibration data", "pass calib=... / --calib")
    from onnxopt.passes.prune.activations import Calibration

    stats = Calibration.of(data).stats(result)
    scores: Scores = {}
    for cut in result.an.cuts:
        item = stats.get(cut.node.inputs[0].name) if cut.role == "in" else None
        value = const_value(cut.node.inputs[cut.index]) if item is not None else None
        if value is None or value.shape[cut.axis] != item.variance.size:  # grouped conv: per-group columns
            continue
        columns = np.moveaxis(np.asarray(value, dtype=np.float64), cut.axis, 0).reshape(value.shape[cut.axis], -1)
        _add_slot(scores, result.classes, cut.atoms, np.square(columns).sum(axis=1) * item.variance, squared=True)
    fallback = l2(result, data)
    return {c: scores.get(c, v) for c, v in fallback.items()}


def resolve_criterion(criterion: str, data: object) -> str:
    """``auto``: ``variance`` when calibration data is given (it scores what a cut costs after the
    mean shift moves into the bias), else ``l2``."""
    return criterion if criterion != "auto" else ("variance" if data is not None else "l2")


def class_scores(result: Result, criterion: str, aggregate: str, data: object = None) -> dict[int, float]:
    criterion = resolve_criterion(criterion, data)
    if criterion not in SCORERS:
        raise ConfigError(f"unknown criterion {criterion!r}", f"one of: {', '.join(sorted(SCORERS))}")
    reduce = AGGREGATES[aggregate]
    return {c: float(reduce(v)) for c, v in SCORERS[criterion](result, data).items()}
