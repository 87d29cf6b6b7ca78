from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxopt
from onnxopt.errors import ProviderUnavailableError
from onnxopt.profiling import get_profile
from onnxopt.profiling.measure import CPU, Item, measure, provider_chain
from tests.conftest import DIGITS, DIGITS_EVAL
from tests.profiling.helpers import endless_loop, fast_profile

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _digits_item() -> Item:
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    return Item("digits", onnx.load(DIGITS), [{"input": x}])


def test_measures_digits_with_spread_placement_and_memory():
    prof = fast_profile()
    [result] = measure([_digits_item()], prof)
    assert result.ok and result.failure is None
    lat = result.latency_ms
    assert lat.n >= prof.measure.min_repeats
    assert 0 < lat.min <= lat.median <= lat.p90 <= lat.p99 <= lat.max
    assert lat.ci_low <= lat.median <= lat.ci_high
    assert result.target_reached == (lat.rel_ci <= prof.measure.target_rel_ci)
    assert result.providers_used == ["CPUExecutionProvider"] and not result.fallback
    assert set(result.placement.nodes) == {"CPUExecutionProvider"}
    assert result.placement.nodes["CPUExecutionProvider"] > 5
    assert "Conv" in result.placement.ops["CPUExecutionProvider"]
    assert result.placement.off_target == []
    assert result.session_create_ms > 0 and result.first_inference_ms > 0
    assert result.throughput_per_s == pytest.approx(1e3 / lat.median)
    assert result.peak_rss_mb > 20
    assert result.session["intra_op_threads"] == 1


@pytest.mark.parametrize("fault,failure,reason", [("abort", "crash", "SIGABRT"), ("exit", "crash", "code 7")])
def test_a_dying_child_is_a_failed_measurement_and_the_parent_goes_on(fault, failure, reason):
    [dead] = measure([_digits_item()], fast_profile(), fault=fault)
    assert not dead.ok and dead.failure == failure and reason in dead.error
    assert dead.latency_ms is None
    [alive] = measure([_digits_item()], fast_profile())
    assert alive.ok and alive.latency_ms.median > 0


def test_a_model_that_hangs_onnxruntime_times_out_and_the_next_one_is_measured():
    x = np.zeros(1, np.float32)
    [hung] = measure([Item("endless-loop", endless_loop(), [{"x": x}])], fast_profile(), timeout_s=3)
    assert not hung.ok and hung.failure == "timeout"
    assert "3 s" in hung.error and hung.measure_s < 10
    [alive] = measure([_digits_item()], fast_profile())
    assert alive.ok


def test_an_onnxruntime_error_in_the_child_is_reported():
    bad_feed = {"input": np.zeros((1, 1, 4, 4), np.float32)}  # wrong spatial size for the Flatten/Gemm head
    [result] = measure([Item("digits", onnx.load(DIGITS), [bad_feed])], fast_profile())
    assert not result.ok and result.failure == "error" and "invalid dimensions" in result.error


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_a_missing_provider_is_an_error_naming_the_package_not_a_cpu_number():
    with pytest.raises(ProviderUnavailableError) as info:
        onnxopt.profile(DIGITS, profile="cuda")
    assert "CUDAExecutionProvider" in str(info.value)
    assert "onnxruntime-gpu" in info.value.hint
    assert info.value.exit_code == 5
    for name, package in [("openvino", "onnxruntime-openvino"), ("qnn-htp", "onnxruntime-qnn"),
                          ("directml", "onnxruntime-directml")]:
        with pytest.raises(ProviderUnavailableError, match="not have") as info:
            provider_chain(get_profile(name), available=["CPUExecutionProvider"])
        assert package in info.value.hint


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_allowed_fallback_is_stated_in_the_result():
    prof = fast_profile("cuda", allow_fallback=True)
    report = onnxopt.profile(DIGITS, profile=prof)
    [result] = report.results
    assert result.ok and result.fallback
    assert result.provider == "CUDAExecutionProvider"
    assert result.providers_used == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider not available" in result.fallback_note
    assert result.placement.off_target  # every node ran off the requested provider, by name


def test_a_plugin_ep_is_loaded_and_measured_or_refused_clearly():
    """The WebGPU plugin registers with onnxruntime in the child; with a GPU and a Vulkan loader it
    runs the model, without them the profile says what is missing (exit code 5), never a CPU number."""
    pytest.importorskip("onnxruntime_ep_webgpu")
    try:
        report = onnxopt.profile(DIGITS, profile=fast_profile("webgpu"))
    except ProviderUnavailableError as exc:
        assert "WebGpuExecutionProvider plugin loaded but found no device" in str(exc), str(exc)
        assert "libvulkan.so.1" in str(exc) and exc.exit_code == 5
    else:
        [result] = report.results
        assert result.ok and result.placement.nodes.get("WebGpuExecutionProvider", 0) > 0


def test_a_plugin_ep_without_a_device_falls_back_only_when_allowed_and_says_so():
    pytest.importorskip("onnxruntime_ep_webgpu")
    [result] = onnxopt.profile(DIGITS, profile=fast_profile("webgpu", allow_fallback=True)).results
    assert result.ok
    if "WebGpuExecutionProvider" not in result.providers_used:  # no GPU here: the CPU device ran it
        assert result.fallback and "did not load WebGpuExecutionProvider" in result.fallback_note
        assert result.placement.nodes.get("CPUExecutionProvider", 0) > 0


def test_a_plugin_is_registered_once_per_process():
    """onnxruntime refuses a second registration; scoring on the target after a measurement (as
    benchmarks/webgpu.py does per variant) must not trip over it."""
    pytest.importorskip("onnxruntime_ep_webgpu")
    from onnxopt.profiling.child import plugin_devices

    plugins, names = {"WebGpuExecutionProvider": "onnxruntime_ep_webgpu"}, ["WebGpuExecutionProvider", CPU]
    first, second = (plugin_devices(plugins, names, allow_fallback=True) for _ in range(2))
    assert len(first[CPU]) == len(second[CPU]) == 1


def test_a_missing_plugin_package_is_named():
    prof = get_profile({"name": "gpu-plugin", "extends": "webgpu",
                        "providers": [{"name": "WebGpuExecutionProvider", "plugin": "no_such_plugin_module"}]})
    with pytest.raises(ProviderUnavailableError, match="does not have") as info:
        provider_chain(prof)
    assert "onnxruntime-ep-webgpu" in info.value.hint


def test_provider_chain_keeps_order_and_adds_cpu():
    chain = provider_chain(get_profile("tensorrt"), available=["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                               "CPUExecutionProvider"])
    assert chain.names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chain.options[0]["trt_engine_cache_enable"] == "1" and chain.note is None


def test_profile_api_with_real_data_and_batches():
    report = onnxopt.profile(DIGITS, profile=fast_profile(), data=DIGITS_EVAL, batch_size=4)
    [result] = report.results
    assert result.ok and not result.inputs_synthetic and result.inputs_source.endswith("digits_eval.npz")
    assert result.batch_size == 4
    assert result.throughput_per_s == pytest.approx(4e3 / result.latency_ms.median)
    assert report.profile == "cpu-1t-fast" and not report.interleaved
