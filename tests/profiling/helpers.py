"""Small models and a fast protocol for the profiler tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxopt.profiling.profiles import Profile, get_profile

FAST = {"warmup": 2, "min_repeats": 10, "min_time_s": 0.05, "max_time_s": 0.4, "timeout_s": 60.0}


def fast_profile(base: str = "cpu-1t", **over) -> Profile:
    """A shipped profile with a short time budget, so a measurement takes well under a second."""
    return get_profile({"name": f"{base}-fast", "extends": base, "measure": FAST, **over})


def matmul_chain(size: int, depth: int, name: str = "mm") -> onnx.ModelProto:
    """x[1,size] through ``depth`` MatMuls: a model whose cost we choose."""
    rng = np.random.default_rng(size + depth)
    inits, nodes, prev = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"{name}{i}"))
        prev = out
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def endless_loop() -> onnx.ModelProto:
    """A Loop whose trip count is 2^62 and whose condition stays true: onnxruntime never returns."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [onnx.numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], "hang",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [onnx.numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
         onnx.numpy_helper.from_array(np.array(True), "cond")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_relu(fixed: bool = True) -> onnx.ModelProto:
    """Conv + Relu with fixed (or symbolic) input dims: a graph every mobile provider takes whole."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    dims = [1, 3, 16, 16] if fixed else ["n", 3, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
