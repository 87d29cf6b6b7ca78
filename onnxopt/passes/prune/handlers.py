"""Per-op handlers: how channels flow through one op type, and how to cut it.

A handler is a function ``(node, an: Analysis) -> None`` registered for op types with
:func:`groups.handles`; it reads input atom arrays (``an.get``), sets output ones (``an.set``), ties
channels (``an.union_arrays``), records the constant slices and fix-ups a cut needs, and pins what
it cannot prove safe. An op type without a handler pins its inputs (``groups.unknown``): a new op is one
handler, one registration, one test. Shape-like ops live in ``handlers_shape.py``.
"""

from __future__ import annotations

import numpy as np

from onnxopt.passes.graph import const_value
from onnxopt.passes.prune.groups import Analysis, ConstCut, MacNode, along, channel_axes, handles, is_empty, vector

# ---------------------------------------------------------------- element-wise and broadcasting

ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu",
    "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Sin", "Cos", "Cast", "Identity", "Dropout",
    "Clip", "Shrink", "LRN",
)


@handles(*ELEMENTWISE)
def elementwise(node, an: Analysis) -> None:
    """Broadcasting element-wise ops (LRN too: it mixes neighbour channels only through a
    normalizer, an approximation of the same kind as pruning itself). Channel-carrying inputs
    are tied position by position; per-channel constants are sliced; other inputs must broadcast
    along every channel axis."""
    inputs = [t for t in node.inputs if not is_empty(t)]
    arrays = [an.get(t) for t in inputs]
    if all(a is None for a in arrays):
        return
    rank = an.rank(node.outputs[0])
    if rank is None:
        return an.pin_inputs(node, f"{node.op} {node.name!r}: output rank unknown")
    padded = [None if a is None else a.reshape((1,) * (rank - a.ndim) + a.shape) for a in arrays]
    carried = [a for a in padded if a is not None]
    if any(a.shape != carried[0].shape for a in carried):
        return an.pin_inputs(node, f"{node.op} {node.name!r} mixes channels on different axes")
    result = carried[0]
    for other in carried[1:]:
        result = an.union_arrays(result, other, node)
    axes = channel_axes(result)
    for index, (tensor, arr) in enumerate(zip(node.inputs, _by_input(node, padded), strict=True)):
        if arr is not None or is_empty(tensor):
            continue
        if not _slice_broadcast_input(node, index, tensor, result, axes, rank, an):
            return an.pin_inputs(node, f"{node.op} {node.name!r}: input {tensor.name!r} has channels it cannot cut")
    for out in node.outputs:
        if out.outputs or out.name:
            an.set(out, result, node)


def _by_input(node, padded: list) -> list:
    """Padded arrays re-aligned with ``node.inputs`` (empty optional inputs got no entry)."""
    values = iter(padded)
    return [None if is_empty(t) else next(values) for t in node.inputs]


def _slice_broadcast_input(node, index: int, tensor, result: np.ndarray, axes: list[int], rank: int,
                           an: Analysis) -> bool:
    """Record a cut of a constant that spans a channel axis; False if a non-constant one does."""
    value = const_value(tensor)
    shape = value.shape if value is not None else an.shape(tensor)
    if shape is None:
        return False
    offset = rank - len(shape)
    for axis in axes:
        local = axis - offset
        if local < 0 or shape[local] == 1:
            continue
        if value is None or shape[local] != result.shape[axis] or len(axes) != 1:
            return False
        an.cuts.append(ConstCut(node, index, local, vector(result, axis), "param"))
    return True


@handles("BatchNormalization", "InstanceNormalization")
def normalization(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    vec = vector(arr, 1)
    if vec is None:
        return an.pin_inputs(node, f"{node.op} {node.name!r}: channels not on axis 1")
    if any(out.outputs or out in an.graph.outputs for out in node.outputs[1:]):
        return an.pin_inputs(node, f"{node.op} {node.name!r}: training-mode outputs are used")
    for index in range(1, len(node.inputs)):
        if const_value(node.inputs[index]) is None:
            return an.pin_inputs(node, f"{node.op} {node.name!r}: parameters are not constant")
    for index in range(1, len(node.inputs)):
        an.cuts.append(ConstCut(node, index, 0, vec, "bn" if index == 1 else "param"))
    an.set(node.outputs[0], arr, node)


@handles("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
         "MaxRoiPool")
def pool(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    if channel_axes(arr) != [1]:
        return an.pin_inputs(node, f"{node.op} {node.name!r}: channels not on axis 1")
    if len(node.outputs) > 1 and (node.outputs[1].outputs or node.outputs[1] in an.graph.outputs):
        return an.pin_inputs(node, f"{node.op} {node.name!r}: its indices output encodes channel positions")
    an.set(node.outputs[0], arr, node)


# ---------------------------------------------------------------- producers


@handles("Conv")
def conv(node, an: Analysis) -> None:
    weight = const_value(node.inputs[1])
    arr = an.get(node.inputs[0])
    rank = an.rank(node.outputs[0])
    if weight is None or rank is None:
        return an.pin_inputs(node, f"Conv {node.name!r}: weights not constant or shape unknown")
    in_vec = None if arr is None else vector(arr, 1)
    if arr is not None and in_vec is None:
        return an.pin_inputs(node, f"Conv {node.name!r}: channels not on axis 1")
    group = int(node.attrs.get("group", 1))
    c_out, per_group = weight.shape[0], weight.shape[1]
    has_bias = len(node.inputs) > 2 and not is_empty(node.inputs[2])
    if has_bias and const_value(node.inputs[2]) is None:
        an.pin_inputs(node, f"Conv {node.name!r}: bias not constant")
        return
    if in_vec is not None and per_group == 1 and group == in_vec.size:  # depthwise: out follows in
        out_vec = np.repeat(in_vec, c_out // group)
        an.cuts.append(ConstCut(node, 1, 0, out_vec, "out"))
        if has_bias:
            an.cuts.append(ConstCut(node, 2, 0, out_vec, "param"))
        an.fixups.append(lambda plan: node.attrs.__setitem__("group", int(plan.kept(in_vec).size)))
        an.macs.append(MacNode(node, in_vec, out_vec, depthwise=True))
        an.set(node.outputs[0], along(out_vec, 1, rank), node)
        return
    if in_vec is not None:
        local = in_vec.reshape(group, per_group)
        for k in range(1, group):  # every group must lose the same local input channels
            an.union_arrays(local[0], local[k], node)
        an.cuts.append(ConstCut(node, 1, 1, local[0], "in"))
    out_vec = an.new_atoms(node, c_out) if c_out > 1 else None
    if out_vec is not None:
        per_out = out_vec.reshape(group, c_out // group)
        for k in range(1, group):
            an.union_arrays(per_out[0], per_out[k], node)
        an.cuts.append(ConstCut(node, 1, 0, out_vec, "out"))
        if has_bias:
            an.cuts.append(ConstCut(node, 2, 0, out_vec, "param"))
        an.set(node.outputs[0], along(out_vec, 1, rank), node)
    an.macs.append(MacNode(node, in_vec, out_vec))


@handles("ConvTranspose")
def conv_transpose(node, an: Analysis) -> None:
    weight = const_value(node.inputs[1])
    arr = an.get(node.inputs[0])
    rank = an.rank(node.outputs[0])
    group = int(node.attrs.get("group", 1))
    has_bias = len(node.inputs) > 2 and not is_empty(node.inputs[2])
    if weight is None or rank is None or group != 1 or (has_bias and const_value(node.inputs[2]) is None):
        return an.pin_inputs(node, f"ConvTranspose {node.name!r}: grouped, or weights not constant")
    in_vec = None if arr is None else vector(arr, 1)
    if arr is not None and in_vec is None:
        return an.pin_inputs(node, f"ConvTranspose {node.name!r}: channels not on axis 1")
    if in_vec is not None:
        an.cuts.append(ConstCut(node, 1, 0, in_vec, "in"))
    out_vec = an.new_atoms(node, weight.shape[1]) if weight.shape[1] > 1 else None
    if out_vec is not None:
        an.cuts.append(ConstCut(node, 1, 1, out_vec, "out"))
        if has_bias:
            an.cuts.append(ConstCut(node, 2, 0, out_vec, "param"))
        an.set(node.outputs[0], along(out_vec, 1, rank), node)
    an.macs.append(MacNode(node, in_vec, out_vec))


@handles("Gemm")
def gemm(node, an: Analysis) -> None:
    weight = const_value(node.inputs[1])
    arr = an.get(node.inputs[0])
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    has_bias = len(node.inputs) > 2 and not is_empty(node.inputs[2])
    bias = const_value(node.inputs[2]) if has_bias else None
    if weight is None or weight.ndim != 2 or (has_bias and bias is None):
        return an.pin_inputs(node, f"Gemm {node.name!r}: weights not constant")
    in_vec = None if arr is None else vector(arr, 0 if trans_a else 1)
    if arr is not None and in_vec is None:
        return an.pin_inputs(node, f"Gemm {node.name!r} reads channels on its row axis")
    if in_vec is not None:
        an.cuts.append(ConstCut(node, 1, 1 if trans_b else 0, in_vec, "in"))
    n_out = weight.shape[0] if trans_b else weight.shape[1]
    out_vec = None
    if n_out > 1 and (bias is None or bias.ndim == 0 or bias.shape[-1] in (1, n_out)) and \
            (bias is None or bias.ndim < 2 or bias.shape[0] == 1):
        out_vec = an.new_atoms(node, n_out)
        an.cuts.append(ConstCut(node, 1, 0 if trans_b else 1, out_vec, "out"))
        if bias is not None and bias.ndim > 0 and bias.shape[-1] == n_out:
            an.cuts.append(ConstCut(node, 2, bias.ndim - 1, out_vec, "param"))
        an.set(node.outputs[0], along(out_vec, 1, 2), node)
    an.macs.append(MacNode(node, in_vec, out_vec))


@handles("MatMul")
def matmul(node, an: Analysis) -> None:
    weight = const_value(node.inputs[1])
    arr = an.get(node.inputs[0])
    rank = an.rank(node.outputs[0])
    if weight is None or weight.ndim != 2 or rank is None or an.get(node.inputs[1]) is not None:
        return an.pin_inputs(node, f"MatMul {node.name!r}: second input is not a constant matrix")
    in_vec = None if arr is None else vector(arr, arr.ndim - 1)
    if arr is not None and in_vec is None:
        return an.pin_inputs(node, f"MatMul {node.name!r} reads channels on a batch or row axis")
    if in_vec is not None:
        an.cuts.append(ConstCut(node, 1, 0, in_vec, "in"))
    out_vec = an.new_atoms(node, weight.shape[1]) if weight.shape[1] > 1 else None
    if out_vec is not None:
        an.cuts.append(ConstCut(node, 1, 1, out_vec, "out"))
        an.set(node.outputs[0], along(out_vec, rank - 1, rank), node)
    an.macs.append(MacNode(node, in_vec, out_vec))


# ---------------------------------------------------------------- reductions over axes


@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
         "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "Softmax", "LogSoftmax", "Hardmax")
def reduce_like(node, an: Analysis) -> None:
    """Reductions and softmax: fine over spatial axes, never across channels."""
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    reduced = _reduced_axes(node, arr.ndim, an)
    if reduced is None or set(reduced) & set(channel_axes(arr)):
        return an.pin_inputs(node, f"{node.op} {node.name!r} works across channels")
    if node.op.startswith("Reduce") or node.op.startswith("Arg"):
        if not int(node.attrs.get("keepdims", 1)):
            arr = arr.reshape([s for i, s in enumerate(arr.shape) if i not in reduced])
    an.set(node.outputs[0], arr, node)


def _reduced_axes(node, rank: int, an: Analysis) -> list[int] | None:
    if node.op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = int(node.attrs.get("axis", -1 if an.opset >= 13 else 1)) % rank
        return [axis] if an.opset >= 13 else list(range(axis, rank))
    if node.op in ("ArgMax", "ArgMin"):
        return [int(node.attrs.get("axis", 0)) % rank]
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and not is_empty(node.inputs[1]):
        value = const_value(node.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    if axes is None:
        return None if int(node.attrs.get("noop_with_empty_axes", 0)) == 0 else []
    return [int(a) % rank for a in axes]
