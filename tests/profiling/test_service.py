"""The measuring service that passes get as ``ctx.measurer``: whole-model timing, the node profile and
outputs on the target, all run by the measurement child."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.data import load_data
from onnxopt.errors import MeasurementError, ProviderUnavailableError
from onnxopt.evaluate import run
from onnxopt.passes.measurer import Measurer
from onnxopt.profiling.service import ProfileMeasurer, default_measurer
from tests.conftest import DIGITS
from tests.profiling.helpers import fast_profile, matmul_chain


def _feeds(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_whole_times_models_interleaved_on_the_profile():
    measurer = ProfileMeasurer(fast_profile())
    assert isinstance(measurer, Measurer) and measurer.target == "CPUExecutionProvider"
    small, large = matmul_chain(64, 1), matmul_chain(256, 8)
    feeds = [{"x": np.ones((1, 64), np.float32)}]
    times = measurer.whole({"small": small, "same": small}, feeds)
    assert list(times) == ["small", "same"] and len(times["small"]) == len(times["same"]) >= 10
    with pytest.raises(MeasurementError, match="timing small, large on profile 'cpu-1t-fast' failed"):
        measurer.whole({"small": small, "large": large}, feeds)  # large wants x[1,256]


def test_nodes_gives_kernel_times_and_the_optimized_graph():
    times = ProfileMeasurer(fast_profile()).nodes(onnx.load(DIGITS), _feeds(), budget_s=0.1)
    assert times.provider == times.target == "CPUExecutionProvider"
    assert 10 <= times.runs <= 50
    optimized = {n.name for n in times.optimized.graph.node}
    assert times.kernels and set(times.kernels) <= optimized  # kernels are nodes of the graph onnxruntime ran
    assert all(len(v) == times.runs and min(v) >= 0 for v in times.kernels.values())  # warm-up runs dropped


def test_outputs_on_the_target_match_a_reference_run():
    feeds = _feeds(3)
    got = ProfileMeasurer(fast_profile()).outputs(onnx.load(DIGITS), feeds)
    data = load_data({"input": np.concatenate([f["input"] for f in feeds])}, onnx.load(DIGITS))
    expected = next(iter(run(onnx.load(DIGITS), data).values()))
    assert len(got) == 3 and all(len(outputs) == 1 for outputs in got)
    np.testing.assert_allclose(np.concatenate([outputs[0] for outputs in got]), expected, rtol=1e-5, atol=1e-6)


def test_a_failed_job_is_a_measurement_error_with_the_reason():
    bad = [{"input": np.zeros((1, 1, 4, 4), np.float32)}]
    with pytest.raises(MeasurementError, match="nodes job on profile 'cpu-1t-fast' failed \\(error\\)"):
        ProfileMeasurer(fast_profile()).nodes(onnx.load(DIGITS), bad)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_a_missing_provider_fails_when_asked_to_time_not_before():
    measurer = ProfileMeasurer("cuda")  # a context may carry it while no pass times anything
    assert measurer.target == "CUDAExecutionProvider" and default_measurer().profile.name == "cpu"
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        measurer.nodes(onnx.load(DIGITS), _feeds())
