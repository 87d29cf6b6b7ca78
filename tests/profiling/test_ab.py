from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.profiling.ab import measure_ab
from onnxopt.profiling.measure import Item
from onnxopt.profiling.profiles import SessionSettings
from tests.conftest import DIGITS
from tests.profiling.helpers import endless_loop, fast_profile, matmul_chain


def _feeds(size: int) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(i).standard_normal((1, size)).astype(np.float32)} for i in range(2)]


def test_interleaved_ab_finds_the_slower_model_with_a_ratio_ci():
    fast, slow = matmul_chain(64, 1, "fast"), matmul_chain(256, 8, "slow")
    results, ratios = measure_ab([Item("fast", fast, _feeds(64)), Item("slow", slow, _feeds(256))], fast_profile())
    assert all(r.ok for r in results)
    assert results[1].latency_ms.median > results[0].latency_ms.median
    [r] = ratios
    assert r.model == "slow" and r.reference == "fast"
    assert r.ci_low <= r.ratio <= r.ci_high
    assert r.ci_low > 2  # 8 MatMuls of 256x256 against one of 64x64
    assert r.rounds == results[0].latency_ms.n == results[1].latency_ms.n  # one run of each per round


def test_same_model_twice_has_a_ratio_near_one(tmp_path):
    path = tmp_path / "mm.onnx"
    path.write_bytes(matmul_chain(128, 4).SerializeToString())
    report = onnxopt.profile([path, path], profile=fast_profile())
    assert report.interleaved and len(report.results) == 2
    assert report.results[1].model.endswith("#2")
    assert 0.8 < report.ratios[0].ratio < 1.25


def test_a_hang_in_an_ab_run_fails_every_model_of_it():
    x = {"x": np.zeros(1, np.float32)}
    results, ratios = measure_ab([Item("mm", matmul_chain(64, 1), _feeds(64)), Item("loop", endless_loop(), [x])],
                              fast_profile(), timeout_s=3)
    assert [r.failure for r in results] == ["timeout", "timeout"] and ratios == []


def test_one_model_under_two_session_settings_in_one_interleaved_run():
    """Each item is opened with its own settings: graph optimizations off leaves Conv, BN and Relu
    unfused (more nodes placed), and each measurement records the settings it ran with."""
    prof = fast_profile()
    model = onnx.load(DIGITS)
    feeds = [{"input": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}]
    plain = prof.session.model_copy(update={"graph_optimization_level": "disable", "intra_op_threads": 2})
    results, [r] = measure_ab([Item("all", model, feeds), Item("disable", model, feeds, session=plain)], prof)
    assert all(m.ok for m in results) and r.model == "disable" and r.rounds == results[0].latency_ms.n
    optimized, unoptimized = (m.placement.nodes["CPUExecutionProvider"] for m in results)
    assert unoptimized > optimized
    assert results[0].session == prof.session.model_dump(mode="json")
    assert results[1].session["graph_optimization_level"] == "disable"
    assert results[1].session["intra_op_threads"] == 2
    assert SessionSettings.model_validate(results[1].session) == plain


def test_an_ab_run_needs_two_items():
    from onnxopt.errors import MeasurementError

    with pytest.raises(MeasurementError, match="at least two"):
        measure_ab([Item("mm", matmul_chain(64, 1), _feeds(64))], fast_profile())
