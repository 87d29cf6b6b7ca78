"""The measuring service on one device profile: what passes get as ``ctx.measurer``.

Every method runs one job in the measurement child (:mod:`onnxopt.profiling.child`), on the
profile's provider chain and session settings: ``whole`` times models interleaved with the
profile's protocol, ``nodes`` runs onnxruntime's node profiler, ``outputs`` runs a model on the
target for its outputs (to score what the target computes). A failed child run is a
:class:`MeasurementError` with the child's reason.

Example::

    measurer = ProfileMeasurer(get_profile("cpu-1t"))
    ctx = PassContext(data=calib, measurer=measurer)      # latency-aware quantization times with it
    measurer.whole({"a": model_a, "b": model_b}, feeds)   # {"a": [seconds per round], "b": [...]}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import MeasurementError
from onnxopt.passes.measurer import Feeds, NodeTimes
from onnxopt.profiling.measure import Done, Item, measure_with_times, provider_chain, run_job
from onnxopt.profiling.profiles import Profile, get_profile

# node profiling: warm-up runs dropped from the trace, then as many runs as fill the budget within
# these bounds (medians of 10+ runs are stable on a noisy 2-core machine, and the trace stays small)
NODE_WARMUP, NODE_MIN_RUNS, NODE_MAX_RUNS = 3, 10, 50


class ProfileMeasurer:
    """Measures on ``profile`` (a name, path, dict or Profile) in a child process under ``interpreter``
    (default: this Python). The provider chain is checked on first use, so a context can carry a
    measurer for a target this machine lacks as long as nothing asks it to time."""

    def __init__(self, profile: Any = None, *, timeout_s: float | None = None, interpreter: str | None = None):
        self.profile: Profile = get_profile(profile)
        self.timeout_s = timeout_s
        self.interpreter = interpreter

    @property
    def target(self) -> str:
        return self.profile.provider

    def whole(self, models: Mapping[str, onnx.ModelProto], feeds: Feeds) -> dict[str, list[float]]:
        """Seconds per round of each model, interleaved, until the profile's protocol is satisfied."""
        shared = [dict(feed) for feed in feeds]
        items = [Item(label, model, shared) for label, model in models.items()]
        results, times = measure_with_times(items, self.profile, timeout_s=self.timeout_s,
                                            interpreter=self.interpreter)
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            raise MeasurementError(f"timing {', '.join(models)} on profile {self.profile.name!r} failed "
                                   f"({failed.failure}): {failed.error}")
        return dict(zip(models, times, strict=True))

    def nodes(self, model: onnx.ModelProto, feeds: Feeds, *, budget_s: float = 1.5) -> NodeTimes:
        """onnxruntime's node profiler on ``model`` over about ``budget_s`` of warm runs."""
        options = {"budget_s": budget_s, "warmup": NODE_WARMUP, "min_runs": NODE_MIN_RUNS,
                   "max_runs": NODE_MAX_RUNS}
        with self._job("nodes", model, feeds, nodes=options) as done:
            optimized = onnx.load(str(done.folder / done.payload["optimized"]), load_external_data=False)
        payload = done.payload
        return NodeTimes(payload["kernels"], optimized, payload["runs"], payload["providers_used"][0], self.target)

    def outputs(self, model: onnx.ModelProto, feeds: Feeds) -> list[list[np.ndarray]]:
        """Each feed's outputs as computed on the profile's provider chain."""
        with self._job("outputs", model, feeds) as done:
            with np.load(done.folder / done.payload["outputs"], allow_pickle=False) as arrays:
                count = len(done.payload["names"])
                return [[arrays[f"{i}|{k}"] for k in range(count)] for i in range(done.payload["samples"])]

    def check(self) -> None:
        """Fail now (ProviderUnavailableError) if this machine cannot run the profile's providers."""
        provider_chain(self.profile)

    @contextmanager
    def _job(self, kind: str, model: onnx.ModelProto, feeds: Feeds, **options: Any) -> Iterator[Done]:
        items = [Item("model", model, [dict(feed) for feed in feeds])]
        with run_job(kind, items, self.profile, timeout_s=self.timeout_s, interpreter=self.interpreter,
                     **options) as done:
            if done.status != "ok":
                raise MeasurementError(f"{kind} job on profile {self.profile.name!r} failed ({done.status}): "
                                       f"{done.payload}")
            yield done


def default_measurer(profile: Any = None) -> ProfileMeasurer:
    """The measurer ``onnxopt.optimize`` gives passes: the target profile's, else the ``cpu`` profile's."""
    return ProfileMeasurer(profile if profile is not None else "cpu")

