"""Exact float rewrites that fold constant arithmetic into the layers around it.

- :func:`fold_affine`: BatchNormalization and per-channel Mul/Div/Add/Sub *after* a Conv,
  ConvTranspose or Gemm go into its weights and bias.
- :func:`fold_into_consumers`: a per-channel Mul/Div *before* Convs goes into their weights (zero
  padding commutes with scaling), an Add/Sub into their biases when no Conv pads.
- :func:`fuse_hardswish`: ``x * Clip(x + 3, 0, 6) / 6`` (and ``x * HardSigmoid(x)``) becomes one
  HardSwish (opset 14).

Each leaves the function unchanged up to float rounding. Why they matter beyond tidiness: every node
left between two Convs is a tensor the int8 quantizer rounds. PP-OCRv4 det (Paddle) wraps every
activation in learnable scalar affines and spells hardswish in four ops: eight rounded tensors per
block where two carry the information.
"""

from __future__ import annotations

import numpy as np

from onnxopt.passes.graph import const_value, only_consumer

AFFINE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


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
    _set_weight_and_bias(producer, new_w.astype(weight.dtype), new_b.astype(weight.dtype), graph)


def _set_weight_and_bias(node, weight: np.ndarray, bias: np.ndarray, graph) -> None:
    """New constants for inputs 1 and 2 (the old ones may be shared with other nodes)."""
    import onnx_graphsurgeon as gs

    stem = node.name or node.outputs[0].name
    node.inputs[1] = gs.Constant(_unique(graph, f"{stem}.weight_folded"), weight)
    b_const = gs.Constant(_unique(graph, f"{stem}.bias_folded"), bias)
    if len(node.inputs) > 2:
        node.inputs[2] = b_const
    else:
        node.inputs.append(b_const)


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


# ---------------------------------------------------------------- affine before Convs


def fold_into_consumers(graph) -> int:
    """Fold constant per-channel Mul/Div/Add/Sub whose output only feeds Convs (as their data input)
    into those Convs, until nothing more folds. Returns the number of nodes folded away.

    An Add/Sub folds only when no consumer pads: a padded border would see the shift where the
    original saw zeros. Run :func:`fold_affine` first, and this after it: ``a * x + b`` then ``Conv``
    folds the Add (unpadded) and then the Mul."""
    folded = 0
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op in ("Mul", "Div", "Add", "Sub") and _fold_into_convs(node, graph):
                folded += 1
                changed = True
        graph.cleanup()
    return folded


def _fold_into_convs(node, graph) -> bool:
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    out = node.outputs[0]
    convs = list(out.outputs)
    if not convs or out in graph.outputs or any(c.op != "Conv" or len(c.inputs) < 2 or c.inputs[0] is not out
                                                 or any(t is out for t in c.inputs[1:]) for c in convs):
        return False
    weights = [const_value(c.inputs[1]) for c in convs]
    if any(w is None or w.dtype.kind != "f" for w in weights):
        return False
    channels = {w.shape[1] * int(c.attrs.get("group", 1)) for w, c in zip(weights, convs, strict=True)}
    if len(channels) != 1:
        return False
    affine = _as_input_affine(node, channels.pop(), weights[0].ndim)
    if affine is None:
        return False
    x, scale, shift = affine
    if np.any(shift != 0) and any(_pads(c) for c in convs):
        return False
    for conv, weight in zip(convs, weights, strict=True):
        _rewrite_consumer(conv, weight, scale, shift, graph)
        conv.inputs[0] = x
    return True


def _as_input_affine(node, channels: int, rank: int):
    """(x, scale, shift) per input channel if ``node`` computes ``x * scale + shift`` on axis 1."""
    first, second = (const_value(t) for t in node.inputs)
    if (first is None) == (second is None):
        return None
    x = node.inputs[0] if second is not None else node.inputs[1]
    affine = _as_affine(node, x, channels, rank)
    return None if affine is None else (x, *affine)


def _pads(conv) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad not in ("NOTSET", "VALID") or any(int(p) != 0 for p in conv.attrs.get("pads", []))


def _rewrite_consumer(conv, weight: np.ndarray, scale: np.ndarray, shift: np.ndarray, graph) -> None:
    """W[o, j] *= scale[c(o, j)], bias[o] += sum_j,k W[o, j, k] * shift[c(o, j)], where c(o, j) is the
    input channel that slot j of output o's group reads."""

    w = weight.astype(np.float64)
    group = int(conv.attrs.get("group", 1))
    per_group_in, per_group_out = w.shape[1], w.shape[0] // group
    source = (np.arange(w.shape[0]) // per_group_out)[:, None] * per_group_in + np.arange(per_group_in)[None, :]
    factors = scale[source].reshape(source.shape + (1,) * (w.ndim - 2))
    shifts = shift[source].reshape(source.shape + (1,) * (w.ndim - 2))
    bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = const_value(bias_in) if bias_in is not None else None
    base = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64).reshape(-1)
    new_b = base + (w * shifts).reshape(w.shape[0], -1).sum(axis=1)
    _set_weight_and_bias(conv, (w * factors).astype(weight.dtype), new_b.astype(weight.dtype), graph)


# ---------------------------------------------------------------- hardswish


HARDSWISH_OPSET = 14


def fuse_hardswish(graph, gate: bool = False) -> int:
    """Replace ``x * Clip(x + 3, 0, 6) / 6`` (any order of the product and the division, ``/ 6`` or
    ``* (1/6)``) and ``x * HardSigmoid(x, 1/6, 0.5)`` by ``HardSwish(x)`` (opset 14), or with
    ``gate`` by ``x * HardSigmoid(x, 1/6, 0.5)`` (any opset: what onnxruntime's CPU EP inlines
    HardSwish into anyway). Returns how many were fused."""
    import onnx_graphsurgeon as gs

    fused = 0
    for node in list(graph.nodes):
        if node.op != "Mul" or not node.outputs:
            continue
        match = _hardswish_at(node, graph)
        if match is None:
            continue
        x, out, last = match
        stem = last.name or out.name
        if gate and last is node and any(t.inputs and t.inputs[0].op == "HardSigmoid" for t in node.inputs):
            continue  # already in that form
        last.outputs.clear()
        if gate:
            sigmoid = gs.Variable(_unique(graph, f"{stem}_gate"), dtype=x.dtype)
            graph.nodes.append(gs.Node("HardSigmoid", name=f"{stem}_gate", attrs={"alpha": 1 / 6, "beta": 0.5},
                                       inputs=[x], outputs=[sigmoid]))
            graph.nodes.append(gs.Node("Mul", name=f"{stem}_hardswish", inputs=[x, sigmoid], outputs=[out]))
        else:
            graph.nodes.append(gs.Node("HardSwish", name=f"{stem}_hardswish", inputs=[x], outputs=[out]))
        fused += 1
    graph.cleanup()
    return fused


def _hardswish_at(mul, graph):
    """(x, output, node to retire) if ``mul`` is the product at the heart of a hardswish."""
    for x, gate in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
        inner = _gate_of(gate, x, graph)
        if inner is None:
            continue
        if inner is True:  # the 1/6 already applied inside the gate
            return x, mul.outputs[0], mul
        after = only_consumer(mul.outputs[0], graph)
        if after is not None and _is_sixth(after, mul.outputs[0]):
            return x, after.outputs[0], after
    return None


def _gate_of(gate, x, graph):
    """True if ``gate`` is ``relu6(x + 3) / 6`` or HardSigmoid(x); "unscaled" if ``relu6(x + 3)``."""
    if len(gate.inputs) != 1 or only_consumer(gate, graph) is None:
        return None
    node = gate.inputs[0]
    if node.op == "HardSigmoid" and node.inputs[0] is x:
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        return True if np.isclose(alpha, 1 / 6) and np.isclose(beta, 0.5) else None
    if node.inputs and _is_sixth(node, node.inputs[0]) and len(node.inputs[0].inputs) == 1:
        clip_out = node.inputs[0]
        return True if only_consumer(clip_out, graph) is node and _is_relu6_of_x_plus_3(clip_out, x, graph) else None
    return "unscaled" if _is_relu6_of_x_plus_3(gate, x, graph) else None


def _is_relu6_of_x_plus_3(tensor, x, graph) -> bool:
    if len(tensor.inputs) != 1 or tensor.inputs[0].op != "Clip":
        return False
    clip = tensor.inputs[0]
    low, high = _clip_bounds(clip)
    if low != 0.0 or high != 6.0:
        return False
    added = clip.inputs[0]
    if len(added.inputs) != 1 or only_consumer(added, graph) is not clip:
        return False
    add = added.inputs[0]
    return add.op == "Add" and len(add.inputs) == 2 and any(
        a is x and _scalar(b) == 3.0 for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])))


def _clip_bounds(clip) -> tuple[float | None, float | None]:
    if "min" in clip.attrs or "max" in clip.attrs:  # opset < 11
        return float(clip.attrs.get("min", -np.inf)), float(clip.attrs.get("max", np.inf))
    bounds = [_scalar(t) if t is not None and t.name else None for t in list(clip.inputs[1:3])]
    return (bounds + [None, None])[0], (bounds + [None, None])[1]


def _is_sixth(node, tensor) -> bool:
    """``tensor / 6`` or ``tensor * (1/6)``."""
    if len(node.inputs) != 2 or node.op not in ("Div", "Mul"):
        return False
    if node.op == "Div":
        return node.inputs[0] is tensor and _scalar(node.inputs[1]) == 6.0
    other = node.inputs[1] if node.inputs[0] is tensor else node.inputs[0] if node.inputs[1] is tensor else None
    value = _scalar(other) if other is not None else None
    return value is not None and np.isclose(value, 1 / 6, rtol=1e-6)


def _scalar(tensor) -> float | None:
    value = const_value(tensor)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 and value.dtype.kind == "f" else None
