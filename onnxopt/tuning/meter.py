"""Latency for the tuner: candidates measured interleaved with the input model by the profiler.

The tuner only sees the :class:`Meter` protocol (a list of (label, model, session overrides) in, one
:class:`Latency` per item out, ratios relative to the first item), so tests can hand it a fake. The
real one, :class:`ProfilerMeter`, runs the profiler's isolated measurement child. Every measurement on
a profile's device, the tuner's and those inside trials (latency-aware quantization), holds one
file lock per profile, so two never share the device, even from parallel trial workers.

Example::

    meter = ProfilerMeter(get_profile("cpu-1t"), feeds)
    ref, cand = meter([("input", model, {}), ("t3", candidate, {"graph_optimization_level": "basic"})])
    cand.ratio, cand.ci_low, cand.ci_high
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import onnx

MeasureItem = tuple[str, onnx.ModelProto, Mapping[str, Any]]


@dataclass
class Latency:
    """One item's latency; ``ratio`` and its interval are relative to the first item of the same run."""

    label: str
    ok: bool
    median_ms: float | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    memory_mb: float | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


class Meter(Protocol):
    def __call__(self, items: Sequence[MeasureItem]) -> list[Latency]: ...


class ProfilerMeter:
    """Measures with ``onnxopt.profiling`` on a profile, each item under its own session settings."""

    def __init__(self, profile, feeds: list[dict[str, np.ndarray]], timeout_s: float | None = None):
        self.profile, self.feeds, self.timeout_s = profile, feeds, timeout_s

    def __call__(self, items: Sequence[MeasureItem]) -> list[Latency]:
        from onnxopt.profiling.measure import Item, measure_with_times
        from onnxopt.profiling.results import ratio

        measured = [Item(label, model, self.feeds, synthetic=False, session=self._session(overrides))
                    for label, model, overrides in items]
        with device_lock(self.profile.name):
            results, times = measure_with_times(measured, self.profile, timeout_s=self.timeout_s)
        out = []
        for result, item_times, (label, _, _) in zip(results, times, items, strict=True):
            if not result.ok:
                out.append(Latency(label, False, error=f"{result.failure}: {result.error}"))
                continue
            r = ratio(label, items[0][0], np.asarray(item_times), np.asarray(times[0])) if times[0] else None
            out.append(Latency(label, True, result.latency_ms.median, r.ratio if r else None,
                               r.ci_low if r else None, r.ci_high if r else None, result.session_rss_mb))
        return out

    def _session(self, overrides: Mapping[str, Any]):
        return self.profile.session.model_copy(update=dict(overrides)) if overrides else self.profile.session


def feeds_for(model: onnx.ModelProto, data, samples: int) -> list[dict[str, np.ndarray]]:
    """The first ``samples`` single-sample feeds of ``data`` for ``model``'s inputs."""
    from itertools import islice

    from onnxopt.model import input_specs

    return list(islice(data.feeds(input_specs(model), 1), samples))


_THREAD_LOCKS: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def device_lock(profile_name: str) -> Iterator[None]:
    """Exclusive use of a profile's device across threads and processes of this machine (an
    ``flock`` on a file in the temp folder; where there is no ``fcntl``, across threads only)."""
    thread_lock = _THREAD_LOCKS.setdefault(profile_name, threading.Lock())
    with thread_lock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory file locks in the stdlib
            yield
            return
        path = os.path.join(tempfile.gettempdir(), f"onnxopt-device-{profile_name}.lock")
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class LockedMeasurer:
    """A pass-context measurer whose every call holds the profile's :func:`device_lock`."""

    def __init__(self, measurer, profile_name: str):
        self.measurer, self.profile_name = measurer, profile_name

    def __getattr__(self, name: str):
        attr = getattr(self.measurer, name)
        if name not in ("whole", "nodes", "outputs"):
            return attr

        def locked(*args, **kwargs):
            with device_lock(self.profile_name):
                return attr(*args, **kwargs)

        return locked
