"""Memory-bounded calibration over an ``onnxopt.data.Dataset``.

onnxruntime's calibrators keep every intermediate output of every sample in memory before they
reduce it (entropy calibration on PP-OCRv4 det was killed at ~19.7 GB). Both calibrator families
can be fed in several rounds, though: MinMax merges ranges between ``collect_data`` calls and the
histogram calibrators (entropy, percentile, distribution) merge histograms. So we measure what one
sample's intermediate outputs weigh, feed the calibrator in chunks that fit the memory budget, and
hand the resulting ranges to ``quantize_static`` through its calibration cache file.

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

METHODS = ("minmax", "entropy", "percentile", "distribution")
DEFAULT_BUDGET = 1 << 30  # 1 GiB of intermediate outputs at a time, or a quarter of free memory if less


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
              symmetric: bool = False, budget: int | None = None):
    """Calibrate the float model at ``model_path``; returns (TensorsData, CalibInfo)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    feeds = list(dataset_feeds(data, specs, samples))
    if not feeds:
        raise DataError("the calibration data has no samples", "give at least one sample")
    options: dict = {"symmetric": symmetric}
    if method == "percentile":
        options["percentile"] = percentile
    calibrator = create_calibrator(model_path, list(op_types) if op_types else None,
                                   augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=_ort_method(method), providers=["CPUExecutionProvider"],
                                   extra_options=options)
    per_sample = _bytes_per_sample(calibrator, feeds[0])
    limit = memory_budget(budget)
    # collect_data holds a chunk's outputs plus, briefly, one concatenated tensor: keep the chunk at half
    chunk = int(max(1, min(len(feeds), (limit // 2) // max(per_sample, 1))))
    for start in range(0, len(feeds), chunk):
        calibrator.collect_data(FeedReader(feeds[start:start + chunk]))
    ranges = calibrator.compute_data()
    info = CalibInfo(method, len(feeds), chunk, per_sample, limit, bool(getattr(data, "synthetic", False)))
    del calibrator
    return ranges, info


def percentile_ranges(model_path: Path, data, specs: Sequence[TensorSpec], percentiles: Sequence[float], *,
                      workdir: Path, op_types: Sequence[str] | None = None, samples: int = 64,
                      symmetric: bool = False, budget: int | None = None) -> dict[float, object]:
    """Percentile ranges for several percentiles from *one* histogram pass (the histogram does not
    depend on the percentile, so a search can compare clippings for the price of one calibration)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    feeds = list(dataset_feeds(data, specs, samples))
    if not feeds:
        raise DataError("the calibration data has no samples", "give at least one sample")
    calibrator = create_calibrator(model_path, list(op_types) if op_types else None,
                                   augmented_model_path=str(workdir / "augmented_hist.onnx"),
                                   calibrate_method=_ort_method("percentile"), providers=["CPUExecutionProvider"],
                                   extra_options={"symmetric": symmetric, "percentile": max(percentiles)})
    per_sample = _bytes_per_sample(calibrator, feeds[0])
    chunk = int(max(1, min(len(feeds), (memory_budget(budget) // 2) // max(per_sample, 1))))
    for start in range(0, len(feeds), chunk):
        calibrator.collect_data(FeedReader(feeds[start:start + chunk]))
    found = {}
    for percentile in percentiles:
        calibrator.collector.percentile = percentile  # ORT reads it in compute_data; histograms stay
        found[percentile] = calibrator.compute_data()
    return found


def _bytes_per_sample(calibrator, feed: dict[str, np.ndarray]) -> int:
    """What one sample's intermediate outputs weigh, measured on the augmented model."""
    outputs = calibrator.infer_session.run(None, feed)
    return int(sum(np.asarray(o).nbytes for o in outputs))


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}[method]


def save_ranges(ranges, path: Path) -> Path:
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, path)
    return path
