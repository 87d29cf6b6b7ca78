"""Test doubles for the tuner: a deterministic meter, small recipe-restricted spaces, a fast tune call.

The fake meter stands in for the profiler (``tune(meter=...)``): an item's latency is its model's
serialized size (int8 and pruning shrink it, as they shrink the work) scaled by its session settings,
so every run of the same candidates reads the same numbers.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx

import onnxopt
from onnxopt.tuning.meter import Latency
from tests.conftest import DIGITS, DIGITS_EVAL

# session settings that cost time in the fake (the profile's defaults cost nothing)
SESSION_COST = {
    "graph_optimization_level": {"all": 1.0, "extended": 1.1, "basic": 1.3},
    "enable_mem_pattern": {True: 1.0, False: 1.05},
    "enable_cpu_mem_arena": {True: 1.0, False: 1.02},
}

# fp32 only, prune without recovery (0.07 s a build instead of 1.3 s), one searched range
FAST_RECIPE: dict[str, Any] = {
    "fix": {"precision": "fp32", "simplify.ort": False, "prune.recover": "none", "prune.criterion": "l1",
            "prune.strategy": "uniform", "prune.round_to": 1, "session.enable_cpu_mem_arena": True},
    "values": {"prune.enabled": [False, True]},
    "range": {"prune.ratio": [0.1, 0.3]},
}


def fake_cost(model: onnx.ModelProto, session: Mapping[str, Any]) -> float:
    cost = float(model.ByteSize())
    for name, table in SESSION_COST.items():
        if name in session:
            cost *= table[session[name]]
    return cost


class FakeMeter:
    """Latency = ``fake_cost`` (or ``ratio_of(label, model, session)`` for items other than the reference
    itself, e.g. not for the final run's A/A copy of the input), ratios to the first item with a +-``spread``
    interval. Records every call, and counts calls that overlap (two at once on one device)."""

    def __init__(self, spread: float = 0.01,
                 ratio_of: Callable[[str, onnx.ModelProto, Mapping[str, Any]], float] | None = None,
                 hold_s: float = 0.0):
        self.spread, self.ratio_of, self.hold_s = spread, ratio_of, hold_s
        self.calls: list[list[str]] = []
        self.overlaps = 0
        self._busy = threading.Lock()

    def __call__(self, items: Sequence[tuple[str, onnx.ModelProto, Mapping[str, Any]]]) -> list[Latency]:
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            self._busy.acquire()
        try:
            time.sleep(self.hold_s)
            self.calls.append([label for label, _, _ in items])
            base = fake_cost(items[0][1], items[0][2])
            reference = items[0][1].SerializeToString()
            out = []
            for index, (label, model, session) in enumerate(items):
                same = not session and model.SerializeToString() == reference
                if index and self.ratio_of is not None and not same:
                    ratio = self.ratio_of(label, model, session)
                else:
                    ratio = fake_cost(model, session) / base
                out.append(Latency(label, True, median_ms=0.03 * ratio, ratio=ratio,
                                   ci_low=ratio * (1 - self.spread), ci_high=ratio * (1 + self.spread),
                                   memory_mb=1.0))
            return out
        finally:
            self._busy.release()


class CountingExecutor(cf.ThreadPoolExecutor):
    """A thread pool that counts the builds submitted to it."""

    def __init__(self, workers: int = 1):
        super().__init__(workers)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def tune_fast(meter: FakeMeter | None = None, jobs: int = 1, recipe: Mapping[str, Any] | None = None,
              executor: cf.Executor | None = None, **kwargs: Any) -> onnxopt.TuneResult:
    """``onnxopt.tune`` on digits with threads for the builds and the fake meter (no profiler)."""
    kwargs.setdefault("budget", 6)
    with executor or cf.ThreadPoolExecutor(jobs) as pool:
        return onnxopt.tune(kwargs.pop("model", str(DIGITS)), profile=kwargs.pop("profile", "cpu-1t"),
                            calib=kwargs.pop("calib", str(DIGITS_EVAL)), executor=pool, jobs=jobs,
                            meter=meter or FakeMeter(), recipe=FAST_RECIPE if recipe is None else recipe, **kwargs)


def sequence(result: onnxopt.TuneResult) -> list[tuple[str, str]]:
    """The trial sequence: (origin, canonical point key) in the order the trials were told."""
    return [(t.origin, t.key) for t in result.trials]
