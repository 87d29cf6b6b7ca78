"""GPTQ rounding: the algorithm on built problems, the conv-as-matrix view on real convs, and its use
in static QDQ (``rounding=gptq``) and int4 weight-only (``algorithm=gptq``) on the corpus."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import ConfigError
from onnxopt.evaluate import fidelity
from onnxopt.passes import PassContext
from onnxopt.passes.quant import Quantize, gptq


def _grid(w: np.ndarray, bits: int = 8):
    scale = np.abs(w).max(axis=2, keepdims=True) / (2 ** (bits - 1) - 1)
    return scale, np.zeros_like(scale)


def test_correlated_inputs_gptq_beats_nearest_rounding_on_the_same_grid():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(64, 64))
    x = rng.normal(size=(4096, 64)) @ mixing + 0.1 * rng.normal(size=(4096, 64))  # strongly correlated inputs
    hessian = (x.T @ x / len(x))[None]
    w = rng.normal(size=(1, 32, 64))
    scale, zero = _grid(w, bits=4)
    nearest = np.clip(np.rint(w / scale), -7, 7)
    codes = gptq.gptq_codes(w, hessian, scale, zero, -7, 7)
    assert codes.min() >= -7 and codes.max() <= 7 and codes.dtype == np.int64
    before = gptq.output_error(w, nearest * scale, hessian)
    after = gptq.output_error(w, codes * scale, hessian)
    assert after < before / 1.5, (before, after)  # measured: 1.8x lower


def test_uncorrelated_inputs_leave_nothing_to_compensate():
    """With a diagonal H no column's error can be offset by another: GPTQ is nearest rounding."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 5, 40))
    hessian = np.stack([np.diag(rng.uniform(0.5, 2.0, 40)) for _ in range(3)])
    scale, zero = _grid(w)
    assert np.array_equal(gptq.gptq_codes(w, hessian, scale, zero, -127, 127), np.rint(w / scale))


def test_block_wise_scales_and_zero_points_are_respected():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(1, 6, 48)) + 0.5
    x = rng.normal(size=(2000, 48)).cumsum(axis=1)
    hessian = (x.T @ x / len(x))[None]
    blocks = w.reshape(1, 6, 3, 16)
    low, high = blocks.min(axis=3), blocks.max(axis=3)
    scale = (high - low) / 15
    zero = np.rint(-low / scale)
    codes = gptq.gptq_codes(w, hessian, scale, zero, 0, 15, group_size=16)
    assert codes.min() >= 0 and codes.max() <= 15
    deq = (codes - np.repeat(zero, 16, axis=2)) * np.repeat(scale, 16, axis=2)
    nearest = (np.clip(np.rint(w / np.repeat(scale, 16, axis=2)) + np.repeat(zero, 16, axis=2), 0, 15)
               - np.repeat(zero, 16, axis=2)) * np.repeat(scale, 16, axis=2)
    assert gptq.output_error(w, deq, hessian) < gptq.output_error(w, nearest, hessian)


@pytest.mark.parametrize("group, stride, pads", [(1, 1, [1, 1, 1, 1]), (4, 2, [0, 1, 1, 0]), (2, 1, [2, 0, 0, 2])])
def test_conv_matrix_view_reproduces_the_conv(group, stride, pads):
    """Weight rows x im2col rows, group by group, equal onnxruntime's Conv at the same positions."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 8 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, strides=[stride, stride], pads=pads)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(2, 8, 9, 9)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    layer = gptq.layers(model)["conv"]
    rows = gptq._input_rows(layer, x, np.random.default_rng(0))  # [positions, groups, cols], random order
    assert rows.shape[0] == y.shape[0] * y.shape[2] * y.shape[3]
    products = np.einsum("rgc,goc->rgo", rows, layer.matrix(w)).reshape(len(rows), -1)
    assert np.allclose(np.sort(products.ravel()), np.sort(y.transpose(0, 2, 3, 1).ravel()), atol=1e-4)
    assert np.array_equal(layer.weight_of(layer.matrix(w)), w)


def test_static_gptq_keeps_onnxruntime_scales_and_improves_weight_error(digits):
    model, calib, held_out = digits
    nearest_ctx, gptq_ctx = PassContext(data=calib), PassContext(data=calib)
    nearest = Quantize().apply(model, nearest_ctx)
    rounded = Quantize(rounding="gptq").apply(model, gptq_ctx)
    onnx.checker.check_model(rounded, full_check=True)
    a = {t.name: numpy_helper.to_array(t) for t in nearest.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in rounded.graph.initializer}
    assert a.keys() == b.keys()
    changed = [n for n in a if a[n].dtype == np.int8 and not np.array_equal(a[n], b[n])]
    assert changed  # GPTQ moved some codes ...
    assert all(np.array_equal(a[n], b[n]) for n in a if a[n].dtype != np.int8)  # ... and nothing else
    moved = np.concatenate([(a[n].astype(int) - b[n]).ravel() for n in changed])
    assert 0.05 < np.mean(moved != 0) < 0.5  # most codes stay the nearest ones
    note = next(n for n in gptq_ctx.notes if n.startswith("GPTQ rounding on"))
    assert float(note.split("error ")[1].split("x")[0]) > 1.5
    assert fidelity(model, rounded, held_out).top1_agreement >= 0.99


def test_static_gptq_with_qoperator_says_it_keeps_nearest_rounding(digits):
    model, calib, _ = digits
    ctx = PassContext(data=calib)
    Quantize(rounding="gptq", format="qoperator").apply(model, ctx)
    assert any("format=qoperator keeps nearest rounding" in n for n in ctx.notes)


def test_cls_layers_on_pooled_inputs_keep_nearest_rounding(ppocr_cls):
    """cls's squeeze-excite convs see one row per sample: GPTQ there fitted the 16 calibration
    lines and cost held-out lines up to 0.01 of cosine. They must keep nearest rounding."""
    model, data = ppocr_cls
    ctx = PassContext(data=data)
    out = Quantize(rounding="gptq", calib_size=8).apply(model, ctx)
    note = next(n for n in ctx.notes if n.startswith("GPTQ rounding on"))
    assert "kept nearest rounding: fewer input rows than weight columns" in note
    assert fidelity(model, out, data).cosine_min >= 0.99


def test_int4_gptq_beats_rtn_on_the_digits_head(digits):
    model, calib, held_out = digits
    scores = {}
    for algorithm in ("rtn", "gptq"):
        ctx = PassContext(data=calib)
        out = Quantize(mode="weight-only", bits=4, block_size=32, algorithm=algorithm).apply(model, ctx)
        onnx.checker.check_model(out, full_check=True)
        assert sum(n.op_type == "MatMulNBits" for n in out.graph.node) == 2
        scores[algorithm] = fidelity(model, out, held_out).outputs[0].cosine_mean
    assert scores["gptq"] > scores["rtn"], scores  # measured: 0.9994 vs 0.9970


def test_int4_gptq_on_a_model_without_matmul_is_refused_clearly(ppocr_det):
    model, data = ppocr_det
    with pytest.raises(ConfigError, match="found no MatMul"):
        Quantize(mode="weight-only", bits=4, algorithm="gptq", calib_size=2).apply(model, PassContext(data=data))


def test_int4_gptq_needs_data_and_hqq_needs_torch(digits):
    model, _, _ = digits
    with pytest.raises(ConfigError, match="needs calibration data"):
        Quantize(mode="weight-only", bits=4, algorithm="gptq").apply(model, PassContext())
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ConfigError, match="needs PyTorch"):
            Quantize(mode="weight-only", bits=4, algorithm="hqq").apply(model, PassContext())


def test_moments_are_measured_in_batches_within_the_memory_budget(digits):
    """16 MiB holds the digits layers a few at a time (several passes, the same codes); at 5 MiB the
    288-input conv's moments alone do not fit and it keeps nearest rounding, saying so."""
    model, calib, _ = digits

    def codes(**options):
        ctx = PassContext(data=calib)
        out = Quantize(**options).apply(model, ctx)
        return {t.name: numpy_helper.to_array(t) for t in out.graph.initializer if t.data_type == TensorProto.INT8}, ctx

    whole, _ = codes(rounding="gptq")
    batched, _ = codes(rounding="gptq", calib_memory="16M")
    assert whole.keys() == batched.keys() and all(np.array_equal(whole[k], batched[k]) for k in whole)
    small, ctx = codes(rounding="gptq", calib_memory="5M")
    nearest, _ = codes(calib_memory="5M")
    assert any("exceed the memory budget" in n for n in ctx.notes)
    too_big = [k for k in small if "branch_b" in k]
    assert too_big and all(np.array_equal(small[k], nearest[k]) for k in too_big)
    assert any(not np.array_equal(small[k], nearest[k]) for k in small)  # the small layers still re-rounded
