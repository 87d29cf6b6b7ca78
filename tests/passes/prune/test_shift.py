"""Mean-shift compensation, the ``variance`` criterion and the ConvTranspose re-fit, on a model
built so the right answer is known: one conv channel is constant, so cutting it costs nothing once
its mean moves into the consumers' biases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Dataset
from onnxopt.evaluate import fidelity
from onnxopt.passes.prune.prune import PruneConfig, prune_model

CONSTANT_CHANNEL = 2


def constant_channel_model() -> onnx.ModelProto:
    """x -> Conv(4) -> Relu -> {Conv 3x3 (no pad), GlobalAveragePool -> Flatten -> Gemm, ConvTranspose 2x2/2}.

    Channel 2 of the first conv has zero weights and bias 1.5: after Relu it is 1.5 everywhere."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(size=4).astype(np.float32)
    w1[CONSTANT_CHANNEL], b1[CONSTANT_CHANNEL] = 0.0, 1.5
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("w1", w1), ("b1", b1), ("w2", rng.normal(size=(5, 4, 3, 3)).astype(np.float32)),
        ("wg", rng.normal(size=(6, 4)).astype(np.float32)), ("bg", rng.normal(size=6).astype(np.float32)),
        ("wt", rng.normal(size=(4, 3, 2, 2)).astype(np.float32)), ("bt", rng.normal(size=3).astype(np.float32))]]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y_conv"], name="conv2"),  # no bias: one gets added
        helper.make_node("GlobalAveragePool", ["r1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["y_fc"], transB=1, alpha=0.5, beta=2.0, name="fc"),
        helper.make_node("ConvTranspose", ["r1", "wt", "bt"], ["y_up"], strides=[2, 2], name="up"),
    ]
    outputs = [helper.make_tensor_value_info("y_conv", TensorProto.FLOAT, ["N", 5, 6, 6]),
               helper.make_tensor_value_info("y_fc", TensorProto.FLOAT, ["N", 6]),
               helper.make_tensor_value_info("y_up", TensorProto.FLOAT, ["N", 3, 16, 16])]
    graph = helper.make_graph(nodes, "constant_channel", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 8, 8])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _data(n: int = 16) -> Dataset:
    return Dataset({"x": np.random.default_rng(1).normal(size=(n, 3, 8, 8)).astype(np.float32)}, None, "normal")


def _errors(model, pruned, data) -> dict[str, tuple[float, float]]:
    """Output -> (max abs diff, relative L2 error)."""
    return {o.name: (o.max_abs_diff, o.rel_l2) for o in fidelity(model, pruned, data).outputs}


def test_variance_criterion_cuts_the_constant_channel_and_mean_shift_makes_it_free():
    model, data = constant_channel_model(), _data()
    one_channel = PruneConfig(ratio=0.25, criterion="variance", recover="none", round_to=1)
    cut, report = prune_model(model, one_channel, data=data)
    assert report["channels_removed"] == 1
    # the constant channel (variance 0) is the one cut: conv1 keeps the other three filters
    kept_bias = next(i for i in cut.graph.initializer if i.dims == [3] and i.name.startswith("b1"))
    assert 1.5 not in numpy_helper.to_array(kept_bias).tolist()
    before = _errors(model, cut, data)
    assert before["y_conv"][0] > 1.0 and before["y_fc"][0] > 0.1  # cut alone: the channel's 1.5 is gone

    bias_only = PruneConfig(ratio=0.25, criterion="variance", recover="bias", round_to=1)
    shifted, report = prune_model(model, bias_only, data=data)
    onnx.checker.check_model(shifted, full_check=True)
    after = _errors(model, shifted, data)
    # exact for the unpadded conv (a bias is added where it had none) and the Gemm (alpha/beta honoured)
    assert after["y_conv"][0] < 1e-4 and after["y_fc"][0] < 1e-4, after
    # the 2x2/2 ConvTranspose gets the per-pixel average: closer on the whole, not exact (taps differ)
    assert after["y_up"][1] < before["y_up"][1]
    assert report["recovery"]["mean_shift_layers"] == 3 and report["recovery"]["shipped"] == "bias"


def test_lstsq_refits_a_stride_two_conv_transpose():
    model, data = constant_channel_model(), _data(32)
    shifted, _ = prune_model(model, PruneConfig(ratio=0.5, criterion="l2", recover="bias", round_to=1), data=data)
    refit = PruneConfig(ratio=0.5, criterion="l2", recover="lstsq", round_to=1)
    fitted, report = prune_model(model, refit, data=data)
    onnx.checker.check_model(fitted, full_check=True)
    ups = [n for n in fitted.graph.node if n.op_type == "ConvTranspose"]
    assert ups and ups[0].input[1].endswith("_refit")  # the upsampler itself was re-fitted
    held_out = Dataset({"x": np.random.default_rng(7).normal(size=(16, 3, 8, 8)).astype(np.float32)}, None, "held")
    cos = {o.name: o.cosine_mean for o in fidelity(model, fitted, held_out).outputs}
    cos_shift = {o.name: o.cosine_mean for o in fidelity(model, shifted, held_out).outputs}
    assert cos["y_up"] > cos_shift["y_up"] + 0.01, (cos, cos_shift)
    assert report["recovery"]["layers"] >= 2


def test_variance_criterion_needs_calibration_data():
    from onnxopt.errors import ConfigError

    no_data = PruneConfig(ratio=0.25, criterion="variance", recover="none", round_to=1)
    with pytest.raises(ConfigError, match="calibration data"):
        prune_model(constant_channel_model(), no_data)
