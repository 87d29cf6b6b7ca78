"""``simplify``: onnxruntime's EP-independent optimizations, constant folding, affine folding, cleanup.

Order and why:
1. onnxruntime offline optimization at the BASIC level (EP-independent rewrites only);
2. graphsurgeon constant folding (Paddle keeps weights in ``Constant`` nodes, torch shares them
   through ``Identity``; both become plain constants);
3. folding of per-channel affine ops into the producing Conv / ConvTranspose / Gemm:
   BatchNormalization, and its Mul/Add (or Div/Sub) form, which onnxruntime leaves for Gemm and
   ConvTranspose;
4. cleanup and toposort.

The output computes the same function as the input up to float rounding.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.model import PROTOBUF_LIMIT, ort_optimize
from onnxopt.passes.base import Choice, Pass, PassConfig, PassContext, register
from onnxopt.passes.graph import const_value, only_consumer, to_graph, to_model
from onnxopt.proto import serialized_size

AFFINE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


class SimplifyConfig(PassConfig):
    ort: bool = True
    fold_constants: bool = True
    fold_affine: bool = True


@register
class Simplify(Pass):
    """Make a model smaller and simpler without changing what it computes.

    Example: ``onnxopt optimize model.onnx -o out.onnx --passes simplify``.
    """

    name = "simplify"
    Config = SimplifyConfig
    tunable = {"ort": Choice((True, False))}

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        cfg: SimplifyConfig = self.config  # type: ignore[assignment]
        if cfg.ort:
            model = _ort_basic(model, ctx)
        graph = to_graph(model)
        if cfg.fold_constants:
            graph.fold_constants(error_ok=True).cleanup()
        if cfg.fold_affine:
            folded = fold_affine(graph)
            ctx.details["affine_folded"] = folded
            if folded:
                ctx.note(f"folded {folded} BatchNormalization/Mul/Add node(s) into the layers before them")
        return to_model(graph, like=model)


def _ort_basic(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    if serialized_size(model) >= PROTOBUF_LIMIT:
        ctx.note("skipped onnxruntime optimization: model above 2 GB")
        return model
    try:
        optimized = ort_optimize(model, "basic")
    except Exception as exc:  # an op onnxruntime cannot load: keep going with the other steps
        ctx.note(f"skipped onnxruntime optimization: {str(exc).splitlines()[0][:200]}")
        return model
    # onnxruntime may raise the IR version; keep the model's own opsets and metadata
    optimized.ir_version = max(model.ir_version, optimized.ir_version)
    return optimized


# ---------------------------------------------------------------- affine folding


def fold_affine(graph) -> int:
    """Fold BatchNormalization and constant per-channel Mul/Div/Add/Sub into the Conv/ConvTranspose
    /Gemm before them, until nothing more folds. Returns the number of nodes folded away."""
    folded = 0
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op in AFFINE_PRODUCERS and node.outputs and _fold_next(node, graph):
                folded += 1
                changed = True
        graph.cleanup()
    return folded


def _fold_next(producer, graph) -> bool:
    consumer = only_consumer(producer.outputs[0], graph)
    if consumer is None:
        return False
    weight = const_value(producer.inputs[1]) if len(producer.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return False
    channels = _out_channels(producer, weight)
    affine = _as_affine(consumer, producer.outputs[0], channels, weight.ndim if producer.op != "Gemm" else 2)
    if affine is None:
        return False
    scale, shift = affine
    _rewrite(producer, weight, scale, shift, graph)
    out = consumer.outputs[0]
    consumer.outputs.clear()
    consumer.inputs.clear()
    producer.outputs[0] = out
    return True


def _out_channels(producer, weight: np.ndarray) -> int:
    if producer.op == "Conv":
        return weight.shape[0]
    if producer.op == "ConvTranspose":
        return weight.shape[1] * int(producer.attrs.get("group", 1))
    return weight.shape[0] if producer.attrs.get("transB", 0) else weight.shape[1]


def _as_affine(node, x, channels: int, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per output channel if ``node`` is an affine map of ``x`` on axis 1."""
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "BatchNormalization":
        if node.inputs[0] is not x or any(o.outputs for o in node.outputs[1:]):
            return None
        params = [const_value(t) for t in node.inputs[1:5]]
        if any(p is None for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
        if gamma.size != channels:
            return None
        scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return scale, beta - mean * scale
    if node.op not in ("Mul", "Div", "Add", "Sub") or len(node.inputs) != 2:
        return None
    if node.inputs[0] is x and node.inputs[1] is not x:
        other, x_first = node.inputs[1], True
    elif node.inputs[1] is x:
        other, x_first = node.inputs[0], False
    else:
        return None
    value = const_value(other)
    vector = _per_channel(value, channels, rank) if value is not None else None
    if vector is None:
        return None
    if node.op == "Mul":
        return vector, zeros
    if node.op == "Add":
        return ones, vector
    if node.op == "Div" and x_first and np.all(vector != 0):
        return 1.0 / vector, zeros
    if node.op == "Sub":
        return (ones, -vector) if x_first else (-ones, vector)
    return None


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts against [N, C, ...] only along C, as a length-C vector."""
    if value.dtype.kind != "f" or value.ndim > rank:
        return None
    full = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _rewrite(producer, weight: np.ndarray, scale: np.ndarray, shift: np.ndarray, graph) -> None:
    """Replace the producer's weight and bias by the folded ones (new constants: weights may be shared)."""
    import onnx_graphsurgeon as gs

    w = weight.astype(np.float64)
    bias_in = producer.inputs[2] if len(producer.inputs) > 2 else None
    bias = const_value(bias_in) if bias_in is not None else None
    if producer.op == "Gemm":
        new_w, new_b = _fold_gemm(producer, w, bias, scale, shift)
    else:
        group = int(producer.attrs.get("group", 1))
        new_w = _scale_conv_weight(producer.op, w, scale, group)
        base = np.zeros(scale.size) if bias is None else bias.astype(np.float64).reshape(-1)
        new_b = base * scale + shift
    stem = producer.name or producer.outputs[0].name
    w_const = gs.Constant(_unique(graph, f"{stem}.weight_folded"), new_w.astype(weight.dtype))
    b_const = gs.Constant(_unique(graph, f"{stem}.bias_folded"), new_b.astype(weight.dtype))
    producer.inputs[1] = w_const
    if len(producer.inputs) > 2:
        producer.inputs[2] = b_const
    else:
        producer.inputs.append(b_const)


def _scale_conv_weight(op: str, w: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    if op == "Conv":  # [C_out, C_in/g, k...]
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    # ConvTranspose: [C_in, C_out/g, k...]; output channel o = g_index * (C_out/g) + j
    c_in, per_group = w.shape[0], w.shape[1]
    grouped = w.reshape((group, c_in // group, per_group) + w.shape[2:])
    factors = scale.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))
    return (grouped * factors).reshape(w.shape)


def _fold_gemm(gemm, w: np.ndarray, bias, scale: np.ndarray, shift: np.ndarray):
    """Y = alpha*A*B + beta*C, then per-column affine: B' = B*s, C' = beta*C*s + shift, beta = 1."""
    trans_b = gemm.attrs.get("transB", 0)
    new_w = w * (scale[:, None] if trans_b else scale[None, :])
    beta = float(gemm.attrs.get("beta", 1.0))
    base = np.zeros(scale.size) if bias is None else beta * bias.astype(np.float64)
    new_b = base * scale + shift
    gemm.attrs["beta"] = 1.0
    return new_w, new_b


def _unique(graph, name: str) -> str:
    taken = graph.tensors().keys()
    candidate, index = name, 1
    while candidate in taken:
        candidate, index = f"{name}_{index}", index + 1
    return candidate
