"""Exact folds of constant arithmetic into Convs, and hardswish fusion (onnxopt.passes.fold)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.passes.fold import fold_into_consumers, fuse_hardswish
from onnxopt.passes.graph import to_graph, to_model

RNG = np.random.default_rng(0)


def _const(name: str, shape: tuple, positive: bool = False) -> onnx.TensorProto:
    values = RNG.uniform(0.5, 2.0, shape) if positive else RNG.normal(size=shape)
    return numpy_helper.from_array(values.astype(np.float32), name)


def _model(nodes, inits, outputs, opset: int = 14, channels: int = 4) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, channels, 9, 9])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, None, 9, 9]) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _rewrite(model: onnx.ModelProto, rewrite) -> tuple[onnx.ModelProto, int]:
    graph = to_graph(model)
    count = rewrite(graph)
    out = to_model(graph, like=model)
    onnx.checker.check_model(out)
    return out, count


def _same(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    x = RNG.normal(size=(2, 4, 9, 9)).astype(np.float32) * 3
    for want, got in zip(_outputs(before, x), _outputs(after, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_scale_and_shift_fold_into_grouped_and_plain_unpadded_convs():
    """x * s + b (per channel, written with the constant first as Paddle does) feeding two 1x1
    Convs, one grouped: both absorb it, weights scaled per input channel, the shift into the bias."""
    nodes = [helper.make_node("Mul", ["s", "x"], ["xs"]), helper.make_node("Add", ["xs", "b"], ["xb"]),
             helper.make_node("Conv", ["xb", "w1", "c1"], ["y1"], group=2),
             helper.make_node("Conv", ["xb", "w2"], ["y2"])]
    inits = [_const("s", (1, 4, 1, 1)), _const("b", (4, 1, 1)), _const("w1", (6, 2, 1, 1)), _const("c1", (6,)),
             _const("w2", (3, 4, 1, 1))]
    model = _model(nodes, inits, ["y1", "y2"])
    folded, count = _rewrite(model, fold_into_consumers)
    assert count == 2 and [n.op_type for n in folded.graph.node] == ["Conv", "Conv"]
    _same(model, folded)


def test_padded_conv_takes_a_scale_but_not_a_shift():
    """Zero padding commutes with a scale, not with a shift (the border would see b, not 0)."""
    scale_only = _model([helper.make_node("Div", ["x", "s"], ["xs"]),
                         helper.make_node("Conv", ["xs", "w"], ["y"], group=4, pads=[1, 1, 1, 1])],
                        [_const("s", (4, 1, 1), positive=True), _const("w", (4, 1, 3, 3))], ["y"])
    folded, count = _rewrite(scale_only, fold_into_consumers)
    assert count == 1 and [n.op_type for n in folded.graph.node] == ["Conv"]
    _same(scale_only, folded)
    shifted = _model([helper.make_node("Sub", ["x", "b"], ["xb"]),
                      helper.make_node("Conv", ["xb", "w"], ["y"], pads=[1, 1, 1, 1])],
                     [_const("b", (1, 4, 1, 1)), _const("w", (5, 4, 3, 3))], ["y"])
    kept, count = _rewrite(shifted, fold_into_consumers)
    assert count == 0 and [n.op_type for n in kept.graph.node] == ["Sub", "Conv"]


def test_an_affine_read_by_anything_but_a_conv_stays():
    model = _model([helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Conv", ["xs", "w"], ["y"]),
                    helper.make_node("Relu", ["xs"], ["r"])],
                   [_const("s", (4, 1, 1)), _const("w", (3, 4, 1, 1))], ["y", "r"])
    _, count = _rewrite(model, fold_into_consumers)
    assert count == 0


def _hardswish_forms() -> onnx.ModelProto:
    """Three spellings of hardswish on three branches: Paddle's x*clip(x+3,0,6)/6, the /6 first
    (relu6(x+3)/6 * x), and torch's x*HardSigmoid(x)."""
    nodes = [
        helper.make_node("Add", ["x", "three"], ["a1"]), helper.make_node("Clip", ["a1", "zero", "six"], ["c1"]),
        helper.make_node("Mul", ["x", "c1"], ["m1"]), helper.make_node("Div", ["m1", "six"], ["h1"]),
        helper.make_node("Add", ["three", "x"], ["a2"]), helper.make_node("Clip", ["a2", "zero", "six"], ["c2"]),
        helper.make_node("Mul", ["c2", "sixth"], ["g2"]), helper.make_node("Mul", ["g2", "x"], ["h2"]),
        helper.make_node("HardSigmoid", ["x"], ["g3"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["x", "g3"], ["h3"]),
    ]
    scalars = [numpy_helper.from_array(np.array(v, np.float32), n)
               for n, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0), ("sixth", 1 / 6))]
    return _model(nodes, scalars, ["h1", "h2", "h3"])


def test_every_hardswish_spelling_becomes_one_hardswish():
    model = _hardswish_forms()
    fused, count = _rewrite(model, fuse_hardswish)
    assert count == 3 and [n.op_type for n in fused.graph.node] == ["HardSwish"] * 3
    _same(model, fused)


def test_hardswish_as_gate_keeps_the_opset_and_leaves_the_gate_form_alone():
    model = _hardswish_forms()
    gated, count = _rewrite(model, lambda g: fuse_hardswish(g, gate=True))
    assert count == 2  # torch's x * HardSigmoid(x) is already that form
    ops = sorted(n.op_type for n in gated.graph.node)
    assert ops == ["HardSigmoid"] * 3 + ["Mul"] * 3
    _same(model, gated)


@pytest.mark.parametrize("bound", [5.0, 3.0])
def test_a_clip_that_is_not_relu6_is_not_hardswish(bound):
    model = _hardswish_forms()
    for init in model.graph.initializer:
        if init.name == "six":
            init.CopyFrom(numpy_helper.from_array(np.array(bound, np.float32), "six"))
    _, count = _rewrite(model, fuse_hardswish)
    assert count == 1  # only the HardSigmoid branch


def test_the_gate_form_is_left_alone_whichever_side_the_gate_is_on():
    model = _model([helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5),
                    helper.make_node("Mul", ["g", "x"], ["h"])], [], ["h"])
    same, count = _rewrite(model, lambda g: fuse_hardswish(g, gate=True))
    assert count == 0 and [n.op_type for n in same.graph.node] == ["HardSigmoid", "Mul"]
    fused, count = _rewrite(model, fuse_hardswish)
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["HardSwish"]
    _same(model, fused)
