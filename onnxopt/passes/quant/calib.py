"""Memory-bounded calibration over an ``onnxopt.data.Dataset``.

onnxruntime's calibrators keep every intermediate output of every sample in memory before they
reduce it, which can exhaust memory on a detection model. Both calibrator families
can be fed in several rounds, though: MinMax merges ranges between ``collect_data`` calls and the
histogram calibrators (entropy, percentile, distribution) merge histograms. So we measure what one
sample's intermediate outputs weigh, feed the calibrator in chunks that fit the memory budget, and
hand the resulting ranges to ``quantize_static`` through its calibration cache file.

``mse`` is ours: from the percentile method's histogram, per tensor the clipping threshold that
minimizes the expected squared error on the grid the tensor will get (:func:`mse_threshold`).

Example::

    ranges, info = calibrate(model_path, dataset, method="entropy", workdir=tmp)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxopt.errors import DataError
from onnxopt.model import TensorSpec, available_memory

METHODS = ("minmax", "entropy", "percentile", "distribution", "mse")
DEFAULT_BUDGET = 1 << 30  # 1 GiB of intermediate outputs at a time, or a quarter of free memory if less
MSE_MIN_FRACTION = 0.01  # mse tries thresholds down to this fraction of |max|: below, a few bins span the grid


@dataclass(frozen=True)
class CalibInfo:
    """What calibration did: samples used, how they were chunked, and the memory this took."""

    method: str
    samples: int
    chunk: int
    bytes_per_sample: int
    budget: int
    synthetic: bool

    def describe(self) -> str:
        source = "SYNTHETIC random data" if self.synthetic else "calibration data"
        return (f"{self.method} calibration on {self.samples} sample(s) of {source}, in chunks of {self.chunk} "
                f"({self.bytes_per_sample / 2**20:.1f} MiB of activations per sample, budget "
                f"{self.budget / 2**20:.0f} MiB)")


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class FeedReader(_reader_base()):
    """A CalibrationDataReader over a list of feed dicts (one sample each)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def __len__(self) -> int:
        return len(self._feeds)


def dataset_feeds(data, specs: Sequence[TensorSpec], limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One-sample feed dicts from a Dataset, cast to the model's input dtypes."""
    if limit is not None and limit < len(data):
        data = data.take(limit)
    dtypes = {s.name: s.dtype for s in specs}
    for feed in data.feeds(specs, batch_size=1):
        yield {k: np.ascontiguousarray(v, dtype=dtypes.get(k, v.dtype)) for k, v in feed.items()}


def memory_budget(requested: int | None = None) -> int:
    if requested is not None:
        return max(requested, 1 << 20)
    return max(min(DEFAULT_BUDGET, available_memory() // 4), 64 << 20)


def calibrate(model_path: Path, data, specs: Sequence[TensorSpec], *, workdir: Path, method: str = "minmax",
              op_types: Sequence[str] | None = None, samples: int = 64, percentile: float = 99.999,
              symmetric: bool = False, budget: int | None = None, levels: int = 255):
    """Calibrate the float model at ``model_path``; returns (TensorsData, CalibInfo). ``levels`` is
    qmax - qmin of the activation type (255 for u8), which only ``mse`` needs."""
    feeds = list(dataset_feeds(data, specs, samples))
    if not feeds:
        raise DataError("the calibration data has no samples", "give at least one sample")
    options: dict = {"symmetric": symmetric}
    if method in ("percentile", "mse"):
        options["percentile"] = percentile
    calibrator, chunk, per_sample, limit = _collect(model_path, feeds, "percentile" if method == "mse" else method,
                                                    options, workdir / "augmented.onnx", op_types, budget)
    if method == "mse":
        ranges = mse_ranges(calibrator.collector.histogram_dict, symmetric=symmetric, levels=levels)
    else:
        ranges = calibrator.compute_data()
    info = CalibInfo(method, len(feeds), chunk, per_sample, limit, bool(getattr(data, "synthetic", False)))
    del calibrator
    return ranges, info


def percentile_ranges(model_path: Path, data, specs: Sequence[TensorSpec], percentiles: Sequence[float], *,
                      workdir: Path, op_types: Sequence[str] | None = None, samples: int = 64,
                      symmetric: bool = False, budget: int | None = None) -> dict[float, object]:
    """Percentile ranges for several percentiles from *one* histogram pass (the histogram does not
    depend on the percentile, so a search can compare clippings for the price of one calibration)."""
    feeds = list(dataset_feeds(data, specs, samples))
    if not feeds:
        raise DataError("the calibration data has no samples", "give at least one sample")
    options = {"symmetric": symmetric, "percentile": max(percentiles, default=99.999)}
    calibrator = _collect(model_path, feeds, "percentile", options, workdir / "augmented_hist.onnx", op_types,
                          budget)[0]
    found: dict[float, object] = {}
    for percentile in percentiles:
        calibrator.collector.percentile = percentile  # ORT reads it in compute_data; histograms stay
        found[percentile] = calibrator.compute_data()
    return found


def _collect(model_path: Path, feeds: list, method: str, options: dict, augmented: Path,
             op_types: Sequence[str] | None, budget: int | None):
    """A calibrator fed every sample in chunks that fit the budget; also (chunk, bytes/sample, budget)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(model_path, list(op_types) if op_types else None,
                                   augmented_model_path=str(augmented), calibrate_method=_ort_method(method),
                                   providers=["CPUExecutionProvider"], extra_options=options)
    per_sample = _bytes_per_sample(calibrator, feeds[0])
    limit = memory_budget(budget)
    # collect_data holds a chunk's outputs plus, briefly, one concatenated tensor: keep the chunk at half
    chunk = int(max(1, min(len(feeds), (limit // 2) // max(per_sample, 1))))
    for start in range(0, len(feeds), chunk):
        calibrator.collect_data(FeedReader(feeds[start:start + chunk]))
    return calibrator, chunk, per_sample, limit


def mse_threshold(hist: np.ndarray, edges: np.ndarray, lowest: float, highest: float, *, symmetric: bool,
                  levels: int = 255) -> tuple[float, float]:
    """The (low, high) range minimizing the expected squared quantization error of a tensor, from its
    onnxruntime percentile histogram (``HistogramCollector``: of |x| when ``symmetric``, else of x
    over [-|max|, |max|]).

    For each candidate threshold t (a bin edge from :data:`MSE_MIN_FRACTION` of |max| up to |max|),
    the range is the percentile method's for that threshold: [-t, t] clamped to the real min and max.
    Values outside it cost their squared distance to the bound (clipping); values inside cost
    step^2/12 (rounding), with step the grid the quantizer builds: 2t/levels for symmetric
    activations, else (high - low)/levels with 0 kept in the range (t/levels for a tensor >= 0).
    A saturating tensor (hardsigmoid, much of it exactly 1) may get t a bin below its max (0.999):
    the model charges values at the max step^2/12, though the grid holds them exactly."""
    counts = np.asarray(hist, np.float64)
    bounds = np.asarray(edges, np.float64)
    centers = (bounds[:-1] + bounds[1:]) / 2
    if symmetric:
        centers = np.abs(centers)  # already |x|; abs keeps a stray negative center harmless
    lowest, highest = float(lowest), float(highest)
    amax = max(abs(lowest), abs(highest))
    if amax == 0 or counts.sum() == 0:
        return lowest, highest
    # below max(lowest, -highest) the clamped range would invert (low > high): not a range
    floor = max(MSE_MIN_FRACTION * amax, lowest, -highest)
    candidates = np.unique(np.append(np.abs(bounds), amax))
    candidates = candidates[(candidates >= floor) & (candidates <= amax)]
    # cumulative moments over bins sorted by center: the clipped mass on each side in O(bins) per t
    order = np.argsort(centers, kind="stable")
    c, n = centers[order], counts[order]
    p0, p1, p2 = (np.concatenate(([0.0], np.cumsum(n * c**k))) for k in range(3))
    if symmetric:
        low, high = -candidates, candidates
    else:  # onnxruntime widens every range to hold 0, so that is the grid and the clipping bound
        low = np.minimum(np.maximum(-candidates, lowest), 0.0)
        high = np.maximum(np.minimum(candidates, highest), 0.0)
    step = (high - low) / levels
    above = np.searchsorted(c, high, side="right")  # bins [above:] lie above high
    below = np.searchsorted(c, low, side="left")  # bins [:below] lie below low
    err_high = (p2[-1] - p2[above]) - 2 * high * (p1[-1] - p1[above]) + high**2 * (p0[-1] - p0[above])
    err_low = p2[below] - 2 * low * p1[below] + low**2 * p0[below]
    error = err_high + err_low + (p0[above] - p0[below]) * step**2 / 12
    best = int(np.argmin(error))
    t = float(candidates[best])
    # the percentile method's form: the threshold, clamped to the real min and max
    return max(-t, lowest), min(t, highest)


def mse_ranges(histograms: dict, *, symmetric: bool, levels: int = 255):
    """TensorsData like the percentile method's (low, high, hist, edges), thresholds by :func:`mse_threshold`."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    found = {}
    for tensor, (hist, edges, lowest, highest, *_) in histograms.items():
        low, high = mse_threshold(hist, edges, lowest, highest, symmetric=symmetric, levels=levels)
        dtype = edges.dtype
        found[tensor] = (np.array(low, dtype=dtype), np.array(high, dtype=dtype), hist, edges)
    # the cache records a method; Percentile is the histogram method whose range form these share
    return TensorsData(CalibrationMethod.Percentile, found)


def _bytes_per_sample(calibrator, feed: dict[str, np.ndarray]) -> int:
    """What one sample's intermediate outputs weigh, measured on the augmented model."""
    outputs = calibrator.infer_session.run(None, feed)
    return int(sum(np.asarray(o).nbytes for o in outputs))


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}[method]


def activation_levels(activation_type: str, symmetric: bool) -> int:
    """qmax - qmin of the activation grid onnxruntime builds (254 for symmetric s8, 255 for u8)."""
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    from onnxopt.passes.quant.config import ort_type

    qmin, qmax = get_qmin_qmax_for_qType(ort_type(activation_type).tensor_type, symmetric=symmetric)
    return int(qmax) - int(qmin)


def save_ranges(ranges, path: Path) -> Path:
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, path)
    return path
