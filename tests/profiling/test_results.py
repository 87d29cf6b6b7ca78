from __future__ import annotations

import math

import numpy as np

from onnxopt.profiling.results import latency_stats, median_ci, ratio, rel_ci


def test_median_ci_brackets_the_median_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = np.sort(rng.lognormal(0, 0.3, 30))
    large = np.sort(rng.lognormal(0, 0.3, 3000))
    for values in (small, large):
        lo, hi = median_ci(values)
        assert lo <= np.median(values) <= hi
    assert rel_ci(large) < rel_ci(small) / 4
    assert math.isinf(rel_ci([1.0, 2.0]))


def test_median_ci_coverage_is_about_95_percent():
    rng = np.random.default_rng(1)
    true_median = math.exp(0.0)  # lognormal(0, s) has median 1
    hits = sum(lo <= true_median <= hi for lo, hi in
               (median_ci(np.sort(rng.lognormal(0, 0.5, 60))) for _ in range(400)))
    assert 0.90 <= hits / 400 <= 0.995


def test_latency_stats_in_milliseconds():
    stats = latency_stats([0.001] * 9 + [0.011])
    assert stats.median == 1.0 and stats.n == 10 and stats.max == 11.0
    assert stats.p90 >= stats.median and stats.p99 <= stats.max


def test_ratio_of_a_model_twice_as_slow():
    rng = np.random.default_rng(2)
    ref = 1 + 0.1 * rng.random(200)
    ratio_ = ratio("b", "a", 2 * ref * (1 + 0.01 * rng.standard_normal(200)), ref)
    assert ratio_.ci_low <= ratio_.ratio <= ratio_.ci_high
    assert 1.98 < ratio_.ci_low < ratio_.ci_high < 2.02
    assert abs(ratio_.ratio_of_medians - 2) < 0.05
