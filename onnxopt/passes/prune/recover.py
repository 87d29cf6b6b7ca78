"""Training-free recovery: re-fit pruned consumers so their outputs match the unpruned model's.

For every Conv (group 1, 2-D), Gemm, MatMul and ConvTranspose whose kernel equals its stride (the
2x upsampler of DBNet and U-Net heads: each output pixel is a linear map of one input pixel) whose
input channels were cut, rows are sampled
from calibration data: the layer's input in the *pruned* model (as im2col patches for a conv)
and the layer's output in the *original* model (kept output channels only). ``lstsq`` solves the
ridge-regularized least squares for weights and bias (the reconstruction step of He, Zhang and
Sun 2017). The mean shift alone (``recover=bias``) needs no fit: :mod:`onnxopt.passes.prune.shift`.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.agreement import row_cosines
from onnxopt.passes.graph import const_value, to_graph, to_model
from onnxopt.passes.im2col import conv_patches
from onnxopt.passes.prune.activations import stream

MAX_FEATURES = 8192  # wider layers (VGG's 25088-wide FC) are left as cut: their normal matrix is too big
RIDGE = 0.1  # relative to the mean diagonal: keeps the normal matrix well conditioned on few samples


def _layers(pruned_graph, original_graph, downstream: bool = False) -> list:
    """Nodes worth re-fitting: input features cut, weights constant, a shape we can im2col. With
    ``downstream``, also every such layer after the first cut one, whose input the cut perturbed:
    each re-fit then corrects the error that reached it, up to the last layer."""
    before = {n.outputs[0].name: n for n in original_graph.nodes if n.outputs}
    chosen = []
    for node in pruned_graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or not node.outputs:
            continue
        if node.op == "ConvTranspose" and not _pixel_shuffle_like(node, const_value(node.inputs[1])):
            continue
        old = before.get(node.outputs[0].name)
        w, w_old = const_value(node.inputs[1]), const_value(old.inputs[1]) if old is not None else None
        if w is None or w_old is None or w.ndim != w_old.ndim:
            continue
        in_axis = _in_axis(node, w, grouped=downstream)
        if in_axis is None or (w.shape[in_axis] == w_old.shape[in_axis] and not (downstream and chosen)):
            continue
        if w.size // max(w.shape[_out_axis(node)], 1) + 1 > MAX_FEATURES:
            continue
        chosen.append(node)
    return chosen


def _pixel_shuffle_like(node, w: np.ndarray | None) -> bool:
    """A 2-D ConvTranspose with kernel == stride and nothing else: output blocks do not overlap."""
    if w is None or w.ndim != 4 or int(node.attrs.get("group", 1)) != 1:
        return False
    plain = all(not any(node.attrs.get(a, [])) for a in ("pads", "output_padding")) and \
        all(d == 1 for d in node.attrs.get("dilations", [1, 1])) and \
        node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
    return plain and list(node.attrs.get("strides", [1, 1])) == list(w.shape[2:])


def _in_axis(node, w: np.ndarray, grouped: bool = False) -> int | None:
    if node.op == "ConvTranspose":
        return 0
    if node.op == "Conv":
        return 1 if (grouped or int(node.attrs.get("group", 1)) == 1) and w.ndim == 4 else None
    if node.op == "Gemm":
        return None if int(node.attrs.get("transA", 0)) else (1 if int(node.attrs.get("transB", 0)) else 0)
    return 0 if w.ndim == 2 else None


def _out_axis(node) -> int:
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return 0 if node.op == "Conv" else 1


def _sample(node, y: np.ndarray, rng, per_feed: int):
    """Random output positions of one feed: (sample, y, x) triples for a conv, flat rows otherwise."""
    if node.op == "Conv":
        n, _, oh, ow = y.shape
        flat = rng.choice(n * oh * ow, size=min(per_feed, n * oh * ow), replace=False)
        bn, rem = np.divmod(flat, oh * ow)
        return (bn, *np.divmod(rem, ow))
    if node.op == "ConvTranspose":  # input pixels: each owns one stride x stride output block
        k0, k1 = const_value(node.inputs[1]).shape[2:]
        n, _, ih, iw = y.shape[0], y.shape[1], y.shape[2] // k0, y.shape[3] // k1
        flat = rng.choice(n * ih * iw, size=min(per_feed, n * ih * iw), replace=False)
        bn, rem = np.divmod(flat, ih * iw)
        return (bn, *np.divmod(rem, iw))
    rows = int(np.prod(y.shape[:-1]))
    return rng.choice(rows, size=min(per_feed, rows), replace=False)


def _rows_at(node, x: np.ndarray, where) -> np.ndarray:
    """The layer's input rows (im2col patches for a conv) at the sampled output positions."""
    if node.op == "Conv":
        return conv_patches(node.attrs, x, const_value(node.inputs[1]).shape, where)
    if node.op == "ConvTranspose":
        return x[where[0], :, where[1], where[2]]
    return x.reshape(-1, x.shape[-1])[where]


def _out_rows(node, y: np.ndarray, where) -> np.ndarray:
    if node.op == "Conv":
        return y[where[0], :, where[1], where[2]]
    if node.op == "ConvTranspose":  # the block each sampled input pixel writes, as (o, a, b) columns
        k0, k1 = const_value(node.inputs[1]).shape[2:]
        bn, iy, ix = where
        oy = iy[:, None, None] * k0 + np.arange(k0)[None, :, None]
        ox = ix[:, None, None] * k1 + np.arange(k1)[None, None, :]
        block = y[bn[:, None, None], :, oy, ox]  # (rows, k0, k1, O)
        return np.moveaxis(block, 3, 1).reshape(len(bn), -1)
    return y.reshape(-1, y.shape[-1])[where]


def _targets(original, layers, kept_out, data, rng, per_feed: int,
             kept_in: dict[str, tuple[int, np.ndarray]] | None = None) -> dict[str, list]:
    """Per layer and feed: sampled positions and the original model's kept outputs there; with
    ``kept_in``, also the layer's input rows read from the original model's kept input channels."""
    outs = [n.outputs[0].name for n in layers]
    ins = [n.inputs[0].name for n in layers] if kept_in is not None else []
    found: dict[str, list] = {name: [] for name in outs}
    for values in stream(original, outs + ins, data):
        for node in layers:
            name = node.outputs[0].name
            y = values[name]
            if kept_out.get(name) is not None:
                y = np.take(y, kept_out[name], axis=1 if node.op in ("Conv", "ConvTranspose") else y.ndim - 1)
            where = _sample(node, y, rng, per_feed)
            item = [where, _out_rows(node, y, where).astype(np.float32)]
            if kept_in is not None:
                x = values[node.inputs[0].name]
                axis, kept = kept_in.get(node.inputs[0].name, (None, None))
                x = x if axis is None else np.take(x, kept, axis=axis)
                item.append(_rows_at(node, x, where).astype(np.float32))
            found[name].append(item)
    return found


def _inputs(node, current, data, targets: list) -> np.ndarray:
    """The layer's input rows in the current (partly re-fitted) model, at the target positions."""
    rows = []
    for xs, item in zip(stream(current, [node.inputs[0].name], data), targets, strict=True):
        rows.append(_rows_at(node, xs[node.inputs[0].name], item[0]))
    return np.concatenate(rows).astype(np.float64)


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares for [W | b]; W as rows = output channels.

    The ridge pulls towards the layer's current weights, not towards zero: with few rows per
    feature (a Gemm sees one row per sample) the fit stays near the cut layer instead of
    interpolating the calibration set.
    """
    sol = _ridge(np.hstack([x, np.ones((len(x), 1))]), y, np.hstack([w, bias.reshape(-1, 1)]).T)
    return sol[:-1].T, sol[-1]


def _ridge(a: np.ndarray, y: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """argmin ||a s - y||^2 + lam ||s - prior||^2, lam scaled to the mean diagonal of a^T a."""
    gram = a.T @ a
    lam = RIDGE * (np.trace(gram) / len(gram) + 1e-12)
    gram[np.diag_indices_from(gram)] += lam
    return np.linalg.solve(gram, a.T @ y + lam * prior)


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, data, kept_out: dict[str, np.ndarray],
            seed: int = 0, rows_per_layer: int = 4096,
            kept_in: dict[str, tuple[int, np.ndarray]] | None = None,
            memory_mb: float = 1024, downstream: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Re-fit the cut consumers of ``pruned`` on ``data``; returns the new model and what was done.

    Without ``kept_in`` the layers are fitted one after another, each on its input in the model with
    the layers before it re-fitted (one run over the data per layer: exact, slow on deep models).
    With ``kept_in`` (tensor -> (axis, kept channel indices)) every layer is fitted on the original
    model's kept input channels, so one run of the original model serves a whole chunk of layers;
    chunks are sized so their sampled rows fit in ``memory_mb``. ``downstream`` (layer by layer only:
    fitted on original inputs, an uncut layer would just be fitted to itself) also re-fits the
    layers after the first cut one, depthwise and grouped convs included.
    """
    graph = to_graph(pruned)
    layers = _layers(graph, to_graph(original), downstream and kept_in is None)
    if not layers:
        return pruned, {"layers": 0}
    rng = np.random.default_rng(seed)
    per_feed = max(rows_per_layer // max(len(data), 1), 64)
    if kept_in is None:
        passes = _sequential(original, pruned, graph, layers, kept_out, data, rng, per_feed)
    else:
        passes = _one_pass(original, layers, kept_out, kept_in, data, rng, per_feed, memory_mb)
    return to_model(graph, like=pruned), {"layers": len(layers), "passes": passes}


def _sequential(original, pruned, graph, layers, kept_out, data, rng, per_feed: int) -> int:
    targets = _targets(original, layers, kept_out, data, rng, per_feed)
    for node in layers:  # in graph order, each on the model with the layers before it re-fitted
        current = _prefix(graph, node.inputs[0].name)
        current.ir_version = pruned.ir_version
        x = _inputs(node, current, data, targets[node.outputs[0].name])
        y = np.concatenate([t[1] for t in targets[node.outputs[0].name]]).astype(np.float64)
        _write(node, *_solve(node, x, y))
    return len(layers) + 1


def _prefix(graph, name: str) -> onnx.ModelProto:
    """The part of ``graph`` that computes tensor ``name``, with it as the only output: each layer's
    run skips everything downstream of the layer (on average half the model)."""
    import onnx_graphsurgeon as gs

    part = graph.copy()
    tensor = part.tensors()[name]
    if tensor.dtype is None:
        tensor.dtype = np.float32
    part.outputs = [tensor]
    part.cleanup(remove_unused_graph_inputs=False)
    return gs.export_onnx(part, do_type_check=False)


def _one_pass(original, layers, kept_out, kept_in, data, rng, per_feed: int, memory_mb: float) -> int:
    """Chunks of layers whose sampled rows fit the budget; one run of the original model per chunk."""
    rows = per_feed * max(len(data), 1)
    chunks: list[list] = [[]]
    used = 0.0
    for node in layers:
        w = const_value(node.inputs[1])
        size = rows * (w.size // max(w.shape[_out_axis(node)], 1) + w.shape[_out_axis(node)] + 1) * 4 / 2**20
        if chunks[-1] and used + size > memory_mb:
            chunks.append([])
            used = 0.0
        chunks[-1].append(node)
        used += size
    for chunk in chunks:
        targets = _targets(original, chunk, kept_out, data, rng, per_feed, kept_in)
        for node in chunk:
            items = targets.pop(node.outputs[0].name)
            x = np.concatenate([t[2] for t in items]).astype(np.float64)
            y = np.concatenate([t[1] for t in items]).astype(np.float64)
            _write(node, *_solve(node, x, y))
    return len(chunks)


def _solve(node, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """New weights (in the layer's own layout) and bias; None where the layer keeps its own."""
    w = const_value(node.inputs[1])
    if node.op == "ConvTranspose":
        return _solve_transpose(node, w, x, y)
    out_axis = _out_axis(node)
    scale = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    w2 = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1).astype(np.float64) * scale
    if node.op == "MatMul":  # no bias input to re-fit: weights only
        new_w, new_b = _ridge(x, y, w2.T).T, None
    else:
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        bias = const_value(node.inputs[2]).reshape(-1) if has_bias else np.zeros(w2.shape[0])
        groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        new_w, new_b = _fit_grouped(x, y, w2, bias, groups)
    rest = tuple(np.delete(np.array(w.shape), out_axis))
    shaped = np.moveaxis(new_w.reshape((w.shape[out_axis],) + rest), 0, out_axis)
    return shaped.astype(w.dtype), None if new_b is None else new_b.astype(w.dtype)


def _solve_transpose(node, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[C, O, k0, k1] weights as O*k0*k1 output columns over C inputs; one bias per O (the mean of
    its k0*k1 fitted intercepts: ONNX has no per-tap bias)."""
    c, o, k0, k1 = w.shape
    has_bias = len(node.inputs) > 2 and node.inputs[2].name
    bias = const_value(node.inputs[2]).reshape(-1) if has_bias else np.zeros(o)
    w2 = np.transpose(w, (1, 2, 3, 0)).reshape(o * k0 * k1, c).astype(np.float64)
    new_w, new_b = _fit(x, y, w2, np.repeat(bias.astype(np.float64), k0 * k1))
    shaped = np.transpose(new_w.reshape(o, k0, k1, c), (3, 0, 1, 2))
    return shaped.astype(w.dtype), new_b.reshape(o, k0 * k1).mean(axis=1).astype(w.dtype)


def _fit_grouped(x: np.ndarray, y: np.ndarray, w2: np.ndarray, bias: np.ndarray,
                 groups: int) -> tuple[np.ndarray, np.ndarray]:
    """A grouped (or depthwise) conv is ``groups`` independent small convs: one small least squares
    per group, on that group's patch columns (a depthwise 5x5 channel: 25 features + bias)."""
    if groups == 1:
        return _fit(x, y, w2, bias)
    bias = bias.astype(np.float64)
    out_g, feat = w2.shape[0] // groups, w2.shape[1]
    new_w, new_b = np.empty_like(w2), np.empty_like(bias)
    for g in range(groups):
        rows, cols = slice(g * out_g, (g + 1) * out_g), slice(g * feat, (g + 1) * feat)
        new_w[rows], new_b[rows] = _fit(x[:, cols], y[:, rows], w2[rows], bias[rows])
    return new_w, new_b


def _write(node, weight: np.ndarray, bias: np.ndarray | None) -> None:
    import onnx_graphsurgeon as gs

    node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_refit", weight)
    if node.op == "Gemm":
        node.attrs["alpha"], node.attrs["beta"] = 1.0, 1.0
    if bias is None:
        return
    b_const = gs.Constant(f"{node.outputs[0].name}_bias_refit", bias)
    if len(node.inputs) > 2 and node.inputs[2].name:
        node.inputs[2] = b_const
    else:
        node.inputs.append(b_const)


def reference_outputs(model: onnx.ModelProto, data) -> list[np.ndarray]:
    """The first output of ``model`` for each feed of ``data``: computed once, compared many times."""
    name = model.graph.output[0].name
    return [values[name] for values in stream(model, [name], data)]


def output_cosine(reference: onnx.ModelProto, candidate: onnx.ModelProto, data,
                  expected: list[np.ndarray] | None = None) -> float:
    """Mean per-sample cosine of the first output: a quick fidelity number for the pass report
    (``expected``: the reference's :func:`reference_outputs`, when already known).

    A sample whose candidate output is non-finite, or zero where the reference is not (a pruned
    detector whose sigmoid saturated to 0), scores 0 (:mod:`onnxopt.agreement`): treating 0/0 as
    agreement once let an all-zero output pass as cosine 1.0."""
    expected = reference_outputs(reference, data) if expected is None else expected
    cosines = []
    for a, b in zip(expected, reference_outputs(candidate, data), strict=True):
        cosines.extend(row_cosines(a, b).tolist())
    return float(np.mean(cosines))
