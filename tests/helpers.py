"""Small models built with onnx.helper, and a way to run the CLI in-process."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``onnxopt ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_classifier(seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Mul/Add -> ConvTranspose -> pool -> Gemm -> BN: every fold simplify knows."""
    rng = np.random.default_rng(seed)

    def const(name, shape, low=None, high=None):
        values = rng.uniform(low, high, shape) if low is not None else rng.normal(size=shape)
        return numpy_helper.from_array(values.astype(np.float32), name)

    inits = [
        const("w1", (8, 3, 3, 3)), const("b1", (8,)), const("g", (8,), 0.5, 1.5), const("be", (8,)),
        const("m", (8,)), const("v", (8,), 0.5, 1.5), const("mul", (1, 8, 1, 1)), const("add", (8, 1, 1)),
        const("wt", (8, 4, 3, 3)), const("wg", (128, 10)), const("bg", (10,)), const("g2", (10,), 0.5, 1.5),
        const("be2", (10,)), const("m2", (10,)), const("v2", (10,), 0.5, 1.5),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["bn1"], name="bn1"),
        helper.make_node("Mul", ["bn1", "mul"], ["mu"], name="mul"),
        helper.make_node("Add", ["add", "mu"], ["ad"], name="add"),
        helper.make_node("Relu", ["ad"], ["r1"], name="relu"),
        helper.make_node("ConvTranspose", ["r1", "wt"], ["ct"], group=2, name="deconv"),
        helper.make_node("MaxPool", ["ct"], ["p"], kernel_shape=[3, 3], strides=[3, 3], name="pool"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["gm"], name="fc"),
        helper.make_node("BatchNormalization", ["gm", "g2", "be2", "m2", "v2"], ["y"], name="bn2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    return model
