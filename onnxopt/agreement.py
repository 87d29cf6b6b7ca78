"""How closely a candidate's outputs follow the reference's: per-sample cosine, max absolute and
relative L2 difference, top-1 agreement of class-like outputs, accuracy against labels. The
primitives under ``evaluate.fidelity`` and under the passes' own checks (pruning's recovery and
sensitivity, quantization's accuracy targets), which sit below ``evaluate`` in the layers.

All maths in float64. Rows that are equal (incl. both zero, or the same NaNs) score exactly 1; a
row where only one side is zero scores 0 (a detector whose sigmoid saturated to 0 is not "0/0,
agrees"); a non-finite mismatch scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict

from onnxopt.errors import DataError, MeasurementError

TINY = np.finfo(np.float64).tiny


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine per sample (leading axis) of two same-shaped arrays."""
    samples = reference.shape[0] if reference.ndim else 1
    r = reference.astype(np.float64).reshape(samples, -1)
    c = candidate.astype(np.float64).reshape(samples, -1)
    same = (r == c) | (np.isnan(r) & np.isnan(c))
    bad = ~same & ~(np.isfinite(r) & np.isfinite(c))
    return cosines(r, c, bad.any(axis=1), same.all(axis=1))


def cosines(r: np.ndarray, c: np.ndarray, bad_rows: np.ndarray, equal_rows: np.ndarray) -> np.ndarray:
    """Per-row cosine of 2-D float64 arrays, given which rows hold a non-finite mismatch and which are equal."""
    r, c = np.where(np.isfinite(r), r, 0.0), np.where(np.isfinite(c), c, 0.0)
    # scale each row by its largest magnitude so huge float64 values cannot overflow the dot product
    scale = np.maximum(np.abs(r).max(axis=1, initial=0.0), np.abs(c).max(axis=1, initial=0.0))
    scale = np.where(scale > 0, scale, 1.0)[:, None]
    r, c = r / scale, c / scale
    norm_r, norm_c = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    both_zero, one_zero = (norm_r == 0) & (norm_c == 0), (norm_r == 0) ^ (norm_c == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip((r * c).sum(axis=1) / (norm_r * norm_c), -1.0, 1.0)
    cos = np.where(both_zero, 1.0, np.where(one_zero, 0.0, cos))
    return np.where(equal_rows, 1.0, np.where(bad_rows, 0.0, cos))


class OutputFidelity(BaseModel):
    """Agreement of one output; ``top1_agreement`` only for class-like outputs, ``exact_match`` only
    for integer/bool outputs, the accuracies only when labels were given."""

    # a NaN-producing candidate has an infinite max diff; keep it visible in JSON instead of null
    model_config = ConfigDict(ser_json_inf_nan="constants")
    name: str
    candidate_name: str
    paired_by_position: bool = False
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float
    rel_l2: float
    top1_agreement: float | None = None
    exact_match: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    notes: tuple[str, ...] = ()


def compare_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], labels: np.ndarray | None = None
) -> list[OutputFidelity]:
    """Compare outputs by name, or by position when the names differ but the counts match."""
    if not reference:
        raise MeasurementError("the reference has no outputs to compare")
    by_position = set(reference) != set(candidate)
    if by_position and len(reference) != len(candidate):
        raise MeasurementError(f"outputs differ: reference has {', '.join(reference)}; candidate has "
                               f"{', '.join(candidate)}", "the candidate must keep the model's outputs")
    pairs = zip(reference, candidate if by_position else reference, strict=True)
    return [_compare_one(r, c, reference[r], candidate[c], labels, by_position) for r, c in pairs]


def _compare_one(name: str, cand_name: str, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None,
                 by_position: bool) -> OutputFidelity:
    if ref.shape != cand.shape:
        raise MeasurementError(f"output {name!r}: reference shape {ref.shape} but candidate shape {cand.shape}")
    samples = ref.shape[0] if ref.ndim else 1
    if samples == 0:
        raise MeasurementError(f"output {name!r} has no samples to compare")
    r = ref.astype(np.float64).reshape(samples, -1)
    c = cand.astype(np.float64).reshape(samples, -1)
    # positions where both agree exactly (incl. the same inf or both NaN) count as no difference
    same = (r == c) | (np.isnan(r) & np.isnan(c))
    bad = ~same & ~(np.isfinite(r) & np.isfinite(c))
    notes = tuple(f"{who} has {int(n)} non-finite values" for who, n in
                  (("reference", np.size(r) - np.isfinite(r).sum()), ("candidate", np.size(c) - np.isfinite(c).sum()))
                  if n)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same | bad, 0.0, np.abs(c - r))
    per_sample = cosines(r, c, bad.any(axis=1), same.all(axis=1))
    rel = np.inf if bad.any() else _rel_l2(diff, np.where(np.isfinite(r), r, 0.0))
    result = OutputFidelity(
        name=name,
        candidate_name=cand_name,
        paired_by_position=by_position,
        cosine_mean=float(per_sample.mean()),
        cosine_min=float(per_sample.min()),
        max_abs_diff=float(np.inf if bad.any() else diff.max(initial=0.0)),
        rel_l2=float(rel),
        exact_match=None if ref.dtype.kind == "f" else float(same.all(axis=1).mean()),
        notes=notes,
    )
    if is_class_like(ref):
        valid = ~bad.reshape(samples, -1).any(axis=1)
        agree = (np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)).reshape(samples, -1).all(axis=1)
        result.top1_agreement = float((agree & valid).mean())
        if labels is not None:
            result.accuracy_reference, result.accuracy_candidate = accuracy(ref, labels), accuracy(cand, labels)
    return result


def _rel_l2(diff: np.ndarray, ref: np.ndarray) -> float:
    """``||diff|| / ||ref||``, both scaled first so values near float64's limit cannot overflow."""
    scale = max(float(diff.max(initial=0.0)), float(np.abs(ref).max(initial=0.0)))
    if scale == 0.0:
        return 0.0
    return float(np.linalg.norm(diff / scale)) / max(float(np.linalg.norm(ref / scale)), TINY)


def is_class_like(output: np.ndarray) -> bool:
    """A float output whose per-sample shape is ``[C]`` or ``[1, C]`` with ``C > 1`` (class scores)."""
    per_sample = output.shape[1:]
    if output.dtype.kind != "f" or len(per_sample) not in (1, 2):
        return False
    return per_sample[-1] > 1 and per_sample[:-1] in ((), (1,))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of class scores ``[N, C]`` (or ``[N, 1, C]``) against integer labels ``[N]``."""
    outputs, labels = np.asarray(outputs), np.asarray(labels)
    if not is_class_like(outputs):
        raise MeasurementError(f"output of shape {outputs.shape} is not class scores; accuracy needs [N, C]")
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.shape != outputs.shape[:1]:
        raise DataError(f"{labels.size} labels for {len(outputs)} outputs", "give one integer label per sample")
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))):
        raise DataError(f"labels must be integer class indices, not {labels.dtype}")
    predicted = np.argmax(outputs.reshape(len(outputs), -1), axis=1)
    return float((predicted == labels.astype(np.int64)).mean())
