"""Mean-shift compensation: a removed input channel's average contribution moves into the bias.

Removing input channel ``c`` of a layer drops ``W[:, c] * x_c`` from every output. Its average,
``W[:, c] * E[x_c]`` (summed over the kernel), is one constant per output channel, so adding it to
the layer's bias leaves only the channel's fluctuation as error: exact for a constant channel, the
common case after BN + hard-swish, where a pruned channel's output saturates to its bias. Without
it every output that reads the cut channel moves by the same offset (a detector's logits shift
together and its sigmoid map drifts to zero or one). Means come from the unpruned model on calibration data
(:class:`onnxopt.passes.prune.activations.Calibration`). It is free — no fitting — so it runs before every
re-fit and inside each sensitivity point.

Handled consumers: Conv and ConvTranspose (``group=1``) and Gemm (``transA=0``). ConvTranspose
gets the per-pixel average (each output pixel sees ``1/prod(strides)`` of the kernel taps);
zero padding at the borders is ignored. MatMul has no bias to move it into: skipped.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.passes.graph import const_value, to_graph, to_model
from onnxopt.passes.prune.analyze import Result
from onnxopt.passes.prune.apply import Plan


def mean_shifts(result: Result, removed: set[int], stats: dict) -> dict[str, np.ndarray]:
    """Consumer output tensor -> bias change over its *original* output channels; read before the cut."""
    plan = Plan(result, removed)
    shifts: dict[str, np.ndarray] = {}
    for item in result.an.cuts:
        node = item.node
        if item.role != "in" or node.inputs[0].name not in stats or node.op not in _DELTAS:
            continue
        gone = ~plan.mask(item.atoms)
        if not gone.any():
            continue
        weight = const_value(node.inputs[item.index])
        mean = stats[node.inputs[0].name].mean
        if weight is None or mean.size != weight.shape[item.axis]:  # grouped conv: columns are per group
            continue
        delta = _DELTAS[node.op](node, np.asarray(weight, np.float64), np.where(gone, mean, 0.0))
        if delta is not None:
            key = node.outputs[0].name
            shifts[key] = shifts.get(key, 0.0) + delta
    return shifts


def _conv(node, weight: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if int(node.attrs.get("group", 1)) != 1:
        return None
    return np.einsum("oc,c->o", weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2), mean)


def _conv_transpose(node, weight: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if int(node.attrs.get("group", 1)) != 1:
        return None
    strides = node.attrs.get("strides") or [1] * (weight.ndim - 2)
    taps = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)
    return np.einsum("co,c->o", taps, mean) / float(np.prod(strides))


def _gemm(node, weight: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if int(node.attrs.get("transA", 0)):
        return None
    columns = weight.T if int(node.attrs.get("transB", 0)) else weight  # [K, N]
    return float(node.attrs.get("alpha", 1.0)) * (mean @ columns)


_DELTAS = {"Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm}


def apply_shifts(model: onnx.ModelProto, shifts: dict[str, np.ndarray],
                 kept_out: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, int]:
    """Add each shift (sliced to the channels its layer kept) to the layer's bias in the pruned model."""
    import onnx_graphsurgeon as gs

    if not shifts:
        return model, 0
    graph = to_graph(model)
    done = 0
    for node in graph.nodes:
        key = node.outputs[0].name if node.outputs else None
        if key not in shifts:
            continue
        delta = shifts[key][kept_out[key]] if key in kept_out else shifts[key]
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        bias = const_value(node.inputs[2]) if has_bias else np.zeros(delta.shape, np.float32)
        if bias is None:
            continue
        if node.op == "Gemm":
            delta = delta / float(node.attrs.get("beta", 1.0)) if has_bias else delta
            if not has_bias:
                node.attrs["beta"] = 1.0
        new = (bias.astype(np.float64) + delta.reshape((1,) * max(bias.ndim - 1, 0) + (-1,))).astype(bias.dtype)
        constant = gs.Constant(f"{key}_mean_shift", np.ascontiguousarray(new))
        if has_bias:
            node.inputs[2] = constant
        else:
            while len(node.inputs) > 2:  # an empty optional bias
                node.inputs.pop()
            node.inputs.append(constant)
        done += 1
    return to_model(graph, like=model), done
