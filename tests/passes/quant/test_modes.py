"""Dynamic, weight-only (int8/int4), fp16 and accuracy-keeping mixed precision on real models."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import accuracy
from onnx import TensorProto, helper, numpy_helper

from onnxopt.evaluate import fidelity
from onnxopt.passes import PassContext
from onnxopt.passes.quant import Fp16, Quantize


def checked(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model, full_check=True)
    return model


def test_dynamic_on_digits_and_cls(digits, ppocr_cls):
    model, _, held_out = digits
    ctx = PassContext()
    out = checked(Quantize(mode="dynamic").apply(model, ctx))
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul") for n in out.graph.node)
    assert accuracy(out, held_out) >= accuracy(model, held_out) - 0.01
    cls, data = ppocr_cls
    out = checked(Quantize(mode="dynamic", op_types="Conv|MatMul").apply(cls, PassContext()))
    assert "ConvInteger" in {n.op_type for n in out.graph.node}
    assert fidelity(cls, out, data).top1_agreement >= 0.8  # ConvInteger costs accuracy (and speed): opt-in only


def test_weight_only_int8_shrinks_and_keeps_accuracy(digits):
    model, _, held_out = digits
    out = checked(Quantize(mode="weight-only").apply(model, PassContext()))
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(n.input[0].endswith("_int8") for n in dq)
    assert "QuantizeLinear" not in {n.op_type for n in out.graph.node}  # activations stay float
    assert out.ByteSize() < 0.5 * model.ByteSize()
    assert accuracy(out, held_out) >= accuracy(model, held_out) - 0.01


def test_weight_only_int4_on_gemm_head(digits):
    model, _, held_out = digits
    ctx = PassContext()
    out = checked(Quantize(mode="weight-only", bits=4, block_size=16).apply(model, ctx))
    assert "MatMulNBits" in {n.op_type for n in out.graph.node}
    assert any("Gemm" in n for n in ctx.notes)
    assert fidelity(model, out, held_out).top1_agreement >= 0.95


def test_fp16_keeps_io_float32_and_fidelity(digits):
    model, calib, held_out = digits
    ctx = PassContext(data=calib)
    out = checked(Fp16().apply(model, ctx))
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer)
    assert fidelity(model, out, held_out).top1_agreement >= 0.99


def _bn_model(variance: float) -> onnx.ModelProto:
    """Conv -> BatchNormalization whose variance is beyond fp16's range (as in PP-OCRv4 det)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32) * 100, "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.zeros(4, np.float32), "m"),
             numpy_helper.from_array(np.full(4, variance, np.float32), "v")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fp16_keeps_out_of_range_constants_in_fp32():
    model = _bn_model(9.79e7)
    ctx = PassContext()
    out = checked(Fp16().apply(model, ctx))
    assert any("bn" in n and "65504" in n for n in ctx.notes)
    bn = next(n for n in out.graph.node if n.name == "bn")
    v = next(t for t in out.graph.initializer if t.name == bn.input[4])
    assert v.data_type == TensorProto.FLOAT
    from onnxopt.data import load_data

    data = load_data("synthetic:n=4", model)
    assert fidelity(model, out, data).cosine_min > 0.999


def test_mixed_precision_meets_target_with_few_float_nodes(digits):
    model, calib, held_out = digits
    ctx = PassContext(data=calib)
    out = checked(Quantize(target="cosine>=0.9997").apply(model, ctx))
    details = ctx.details["quantize"]
    assert details["scores"]["cosine"] >= 0.9997
    kept = details["kept_in_float"]
    assert len(kept) < details["quantizable_nodes"]
    assert any("kept in float" in n for n in ctx.notes) or not kept
    assert accuracy(out, held_out) >= accuracy(model, held_out) - 0.01
