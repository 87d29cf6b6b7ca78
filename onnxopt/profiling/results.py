"""Typed results of the profiler and the statistics behind them.

The confidence interval of a median is distribution-free (order statistics): with ``n`` sorted
samples, ranks ``n/2 ± z·√n/2`` bound the median with ~95% confidence, so no normality is assumed
for latency, which is skewed and heavy-tailed. ``median_ci`` and ``rel_ci`` live in the child
module, which uses them and must not import onnxopt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

# the child computes them too and must stand alone (no onnxopt imports): one definition, there
from onnxopt.profiling.child import Z95, median_ci, rel_ci  # noqa: F401  (re-exported)


class LatencyStats(BaseModel):
    """Milliseconds per run; ``ci_low``/``ci_high`` bound the median, ``rel_ci`` is their half-width / median."""

    median: float
    mean: float
    p90: float
    p99: float
    std: float
    min: float
    max: float
    n: int
    ci_low: float
    ci_high: float
    rel_ci: float


class Placement(BaseModel):
    """Which provider ran which nodes of the optimized graph (from onnxruntime's profiling trace)."""

    nodes: dict[str, int]
    ops: dict[str, dict[str, int]]
    off_target: list[str] = []


class Measurement(BaseModel):
    """One model measured on one profile; ``ok`` false means ``failure`` and ``error`` say why."""

    model: str
    profile: str
    ok: bool
    failure: Literal["crash", "timeout", "error"] | None = None
    error: str | None = None
    provider: str
    providers_requested: list[str]
    providers_used: list[str] = []
    fallback: bool = False
    fallback_note: str | None = None
    placement: Placement | None = None
    latency_ms: LatencyStats | None = None
    session_create_ms: float | None = None
    first_inference_ms: float | None = None
    throughput_per_s: float | None = None
    batch_size: int = 1
    peak_rss_mb: float | None = None
    session_rss_mb: float | None = None
    target_rel_ci: float
    target_reached: bool = False
    measure_s: float = 0.0
    inputs_synthetic: bool = True
    inputs_source: str = ""
    session: dict[str, Any] = {}  # the session settings it ran with: the item's own, else the profile's
    onnxruntime_version: str = ""


class Ratio(BaseModel):
    """Latency of ``model`` over the first model's, measured interleaved in the same process.

    ``ratio`` is the median of the per-round ratios (each round runs both models back to back) and
    ``ci_low``/``ci_high`` bound it; ``ratio_of_medians`` is the plain ratio of the two medians."""

    model: str
    reference: str
    ratio: float
    ratio_of_medians: float
    ci_low: float
    ci_high: float
    rounds: int


def latency_stats(seconds: Sequence[float] | np.ndarray) -> LatencyStats:
    ms = np.sort(np.asarray(seconds, dtype=np.float64)) * 1e3
    med = float(np.median(ms))
    lo, hi = median_ci(ms) if len(ms) >= 6 else (float(ms[0]), float(ms[-1]))
    return LatencyStats(
        median=med, mean=float(ms.mean()), p90=float(np.percentile(ms, 90)), p99=float(np.percentile(ms, 99)),
        std=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0, min=float(ms[0]), max=float(ms[-1]), n=len(ms),
        ci_low=lo, ci_high=hi, rel_ci=max(med - lo, hi - med) / med if med > 0 else math.inf,
    )


def ratio(model: str, reference: str, times: np.ndarray, ref_times: np.ndarray) -> Ratio:
    """Median of per-round ratios with its CI (rounds pair the two models), and the ratio of medians."""
    per_round = np.sort(np.asarray(times) / np.asarray(ref_times))
    lo, hi = median_ci(per_round) if len(per_round) >= 6 else (float(per_round[0]), float(per_round[-1]))
    return Ratio(model=model, reference=reference, ratio=float(np.median(per_round)),
                 ratio_of_medians=float(np.median(times) / np.median(ref_times)), ci_low=lo, ci_high=hi,
                 rounds=len(per_round))
