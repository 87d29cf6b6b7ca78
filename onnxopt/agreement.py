"""Per-sample cosine of two output arrays: the primitive under ``evaluate.fidelity`` and under the
passes' own checks (pruning's recovery and sensitivity), which sit below ``evaluate`` in the layers.

All maths in float64. Rows that are equal (incl. both zero, or the same NaNs) score exactly 1; a
row where only one side is zero scores 0 (a detector whose sigmoid saturated to 0 is not "0/0,
agrees"); a non-finite mismatch scores 0.
"""

from __future__ import annotations

import numpy as np


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
