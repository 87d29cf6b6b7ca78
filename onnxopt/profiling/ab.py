"""A/B latency: several models (or one model under several session settings) measured interleaved
(A B A B ...) in one child process.

Sessions are created once; each round runs every item once, so slow drifts of the machine (turbo,
thermal, other tenants) hit all of them alike, and the per-round ratios give the ratio's spread.
("compare" in the API is output agreement; this is latency.)

Example::

    results, ratios = measure_ab([Item("base", a, feeds), Item("int8", b, feeds)], get_profile("cpu"))
    ratios[0].ratio, ratios[0].ci_low, ratios[0].ci_high
    two = SessionSettings(intra_op_threads=2)
    results, [r] = measure_ab([Item("1t", a, feeds), Item("2t", a, feeds, session=two)], get_profile("cpu-1t"))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxopt.errors import MeasurementError
from onnxopt.profiling.measure import Item, measure_with_times
from onnxopt.profiling.profiles import Profile
from onnxopt.profiling.results import Measurement, Ratio, ratio


def measure_ab(items: Sequence[Item], profile: Profile, *, timeout_s: float | None = None,
               fault: str | None = None, interpreter: str | None = None) -> tuple[list[Measurement], list[Ratio]]:
    """Measure two or more items interleaved; the ratios are each later item's latency over the first one's,
    with an interval from the paired rounds (none when the measurement failed)."""
    if len(items) < 2:
        raise MeasurementError("an A/B comparison needs at least two models")
    results, times = measure_with_times(items, profile, timeout_s=timeout_s, fault=fault, interpreter=interpreter)
    if not all(r.ok for r in results):
        return results, []
    reference = np.asarray(times[0])
    ratios = [ratio(item.label, items[0].label, np.asarray(t), reference) for item, t in zip(items, times, strict=True)]
    return results, ratios[1:]
