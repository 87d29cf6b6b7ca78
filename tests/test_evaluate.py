"""Tests for onnxopt.evaluate: running models on data, fidelity and accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Dataset, load_data
from onnxopt.errors import ConfigError, DataError, MeasurementError
from onnxopt.evaluate import accuracy, compare_outputs, fidelity, is_class_like, run

ROOT = Path(__file__).resolve().parents[1]
DIGITS_MODEL, DIGITS_DATA = ROOT / "models" / "digits_cnn.onnx", ROOT / "models" / "digits_eval.npz"


def classifier(batch="batch", output="logits", noise=0.0) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm over [batch, 1, 8, 8]; ``noise`` perturbs the Gemm weights."""
    rng = np.random.default_rng(0)
    gemm_w = rng.standard_normal((4 * 64, 10)).astype(np.float32)
    gemm_w += noise * np.random.default_rng(9).standard_normal(gemm_w.shape).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], [output]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(gemm_w, "gw"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "gb"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def relu(elem) -> onnx.ModelProto:
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [value("x", elem, ["n", 6])],
                              [value("y", elem, ["n", 6])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def data() -> Dataset:
    x = np.random.default_rng(3).standard_normal((12, 1, 8, 8)).astype(np.float32)
    return load_data({"input": x, "labels": np.arange(12) % 10}, classifier())


# ---------------------------------------------------------------- run


def test_run_concatenates_batches(data):
    one = run(classifier(), data)
    three = run(classifier(), data, batch_size=3, threads=1)
    assert one["logits"].shape == (12, 10)
    np.testing.assert_allclose(one["logits"], three["logits"], rtol=1e-5, atol=1e-5)


def test_run_stacks_whole_feeds():
    x = np.random.default_rng(4).standard_normal((5, 1, 1, 8, 8)).astype(np.float32)
    out = run(classifier(batch=1), load_data({"input": x}, classifier(batch=1)))
    assert out["logits"].shape == (5, 1, 10)


def test_run_reports_onnxruntime_errors_in_one_line():
    bad = Dataset({"input": np.zeros((2, 1, 7, 8), np.float32)})  # bypasses load_data's checks on purpose
    with pytest.raises(DataError) as info:
        run(classifier(), bad)
    assert "\n" not in info.value.one_line() and "input" in info.value.message, info.value.message
    assert not info.value.message.startswith("onnxruntime rejects the input: [ONNXRuntimeError]")


def test_run_refuses_unavailable_provider(data):
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        run(classifier(), data, providers=["NoSuchExecutionProvider"])


def test_run_casts_within_kind_for_fp16_candidates():
    x = np.linspace(-1, 1, 18, dtype=np.float32).reshape(3, 6)
    reference, candidate = relu(TensorProto.FLOAT), relu(TensorProto.FLOAT16)
    result = fidelity(reference, candidate, load_data({"x": x}, reference))
    assert result.outputs[0].cosine_min > 0.9999 and 0 < result.max_abs_diff < 1e-3


# ---------------------------------------------------------------- fidelity


def test_fidelity_against_itself_is_perfect(data):
    result = fidelity(classifier(), classifier(), data)
    out = result.outputs[0]
    assert out.cosine_mean == 1.0 and out.cosine_min == 1.0  # identical outputs give exactly 1
    assert out.max_abs_diff == 0.0 and out.rel_l2 == 0.0 and out.top1_agreement == 1.0
    assert result.samples == 12 and not result.synthetic and not result.paired_by_position
    assert result.cosine_min == pytest.approx(1.0) and result.top1_agreement == 1.0
    assert result.accuracy_reference == result.accuracy_candidate
    assert json.loads(result.model_dump_json())["cosine_min"] == pytest.approx(1.0)


def test_fidelity_against_perturbed_copy(data):
    result = fidelity(classifier(), classifier(noise=0.3), data, batch_size=4)
    out = result.outputs[0]
    assert 0.5 < out.cosine_min <= out.cosine_mean < 0.9999
    assert out.max_abs_diff > 1e-3 and 0.01 < out.rel_l2 < 1.0
    assert 0.0 <= out.top1_agreement <= 1.0


def test_fidelity_pairs_renamed_outputs_by_position(data):
    result = fidelity(classifier(), classifier(output="scores"), data)
    out = result.outputs[0]
    assert result.paired_by_position and out.paired_by_position
    assert (out.name, out.candidate_name) == ("logits", "scores") and out.cosine_min == pytest.approx(1.0)


def test_fidelity_on_synthetic_data_says_so():
    model = classifier()
    result = fidelity(model, model, load_data("synthetic:n=3", model))
    assert result.synthetic and result.samples == 3 and "synthetic" in result.source
    assert result.accuracy_reference is None


def test_fidelity_accuracy_with_labels(data):
    reference = run(classifier(), data)["logits"]
    result = fidelity(classifier(), classifier(noise=0.3), data)
    expected = float((reference.argmax(axis=1) == data.labels).mean())
    assert result.accuracy_reference == pytest.approx(expected)
    assert result.accuracy_candidate is not None


# ---------------------------------------------------------------- compare_outputs edge cases


def test_compare_outputs_count_and_shape_mismatch():
    a = {"x": np.zeros((2, 3)), "y": np.zeros((2, 3))}
    with pytest.raises(MeasurementError, match="outputs differ"):
        compare_outputs(a, {"z": np.zeros((2, 3))})
    with pytest.raises(MeasurementError, match=r"output 'x': reference shape \(2, 3\) but candidate shape \(2, 4\)"):
        compare_outputs({"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))})


def test_cosine_zero_vectors_and_non_finite():
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]], np.float32)
    cand = np.array([[0.0, 0.0], [0.0, 0.0], [np.nan, 2.0]], np.float32)
    out = compare_outputs({"y": ref}, {"y": cand})[0]
    assert out.cosine_min == 0.0 and out.cosine_mean == pytest.approx(1 / 3)
    assert out.max_abs_diff == float("inf") and out.rel_l2 == float("inf")
    assert out.notes == ("candidate has 1 non-finite values",)
    assert "Infinity" in out.model_dump_json()
    # the same inf in both counts as agreement, not as a difference
    same = compare_outputs({"y": np.array([[np.inf, 1.0]])}, {"y": np.array([[np.inf, 1.0]])})[0]
    assert same.max_abs_diff == 0.0 and same.cosine_min == 1.0


def test_cosine_survives_huge_values():
    ref = np.full((1, 4), 1e300)
    out = compare_outputs({"y": ref}, {"y": ref * 0.5})[0]
    assert out.cosine_min == pytest.approx(1.0) and out.max_abs_diff == pytest.approx(5e299)
    assert out.rel_l2 == pytest.approx(0.5)


def test_integer_outputs_get_exact_match_not_top1():
    ref = np.array([[1, 2], [3, 4], [5, 6]], np.int64)
    cand = np.array([[1, 2], [3, 0], [5, 6]], np.int64)
    out = compare_outputs({"ids": ref}, {"ids": cand})[0]
    assert out.top1_agreement is None and out.exact_match == pytest.approx(2 / 3)
    assert out.max_abs_diff == 4.0


def test_class_like_detection():
    assert is_class_like(np.zeros((4, 10), np.float32)) and is_class_like(np.zeros((4, 1, 10), np.float32))
    assert not is_class_like(np.zeros((4, 1), np.float32))
    assert not is_class_like(np.zeros((4, 3, 8, 8), np.float32))
    assert not is_class_like(np.zeros((4, 10), np.int64))


def test_accuracy():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(scores, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(scores[:, None, :], np.array([1.0, 0.0, 1.0])) == 1.0
    with pytest.raises(DataError, match="2 labels for 3"):
        accuracy(scores, np.array([1, 0]))
    with pytest.raises(DataError, match="integer class"):
        accuracy(scores, np.array([0.5, 1, 0]))
    with pytest.raises(MeasurementError, match="not class scores"):
        accuracy(np.zeros((3, 2, 2)), np.array([0, 1, 0]))


@pytest.mark.skipif(not (DIGITS_MODEL.exists() and DIGITS_DATA.exists()),
                    reason="models/digits_cnn.onnx or models/digits_eval.npz not built yet (models/train_digits.py)")
def test_real_digits_model_fidelity_and_accuracy():
    model = onnx.load(DIGITS_MODEL)
    data = load_data(DIGITS_DATA, model, limit=100)
    result = fidelity(model, model, data, batch_size=10)
    assert result.cosine_min == pytest.approx(1.0) and result.top1_agreement == 1.0
    # a trained digits classifier is far above the 10% of chance
    assert result.accuracy_reference is not None and result.accuracy_reference > 0.8
