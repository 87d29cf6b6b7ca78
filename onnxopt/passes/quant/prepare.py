"""Make a real exporter's float model quantizable by onnxruntime.quantization.

Plain onnxruntime fails on real exports in known ways; each has a step here, and each step says
what it did (``Prepared.notes``):

- Paddle keeps weights in ``Constant`` nodes; the quantizers want initializers
  ("Expected conv2d_394.w_0 to be an initializer") -> :func:`constants_to_initializers`.
- torch shares weights through ``Identity`` nodes -> :func:`bypass_weight_identities`.
- IR < 4 models (the onnx light zoo) list every initializer as a graph input, which makes them
  overridable and unquantizable -> :func:`drop_initializer_inputs`.
- per-channel QDQ writes ``DequantizeLinear(axis=...)``, which needs opset 13; older models are
  upgraded with onnx's version converter -> :func:`ensure_opset`.
- ``quant_pre_process`` (symbolic shape inference + ORT optimization) helps, but needs sympy and
  fails on some graphs (an AssertionError in ``_infer_Concat`` on PP-OCR cls); it is retried
  without symbolic shape inference, then skipped, and each outcome is recorded.
- unnamed nodes cannot be kept in float (``nodes_to_exclude`` matches names) -> :func:`name_nodes`.
- a model that is already quantized (ConvInteger, DynamicQuantizeLinear, QDQ...) makes the
  quantizers crash deep inside; :func:`refuse_if_quantized` says so up front.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import numpy_helper

from onnxopt.errors import ModelError
from onnxopt.model import default_opset, upgrade_opset
from onnxopt.passes.quant.ortio import via_files

QUANTIZED_OPS = frozenset({
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QLinearConv",
    "QLinearMatMul", "QLinearAdd", "QLinearMul", "QGemm", "QuantizeLinear", "DequantizeLinear",
    "MatMulNBits", "MatMulIntegerToFloat", "QLinearConcat", "QLinearGlobalAveragePool",
})
QDQ_OPSET = 13  # DequantizeLinear's ``axis`` (per-channel) arrived in opset 13


@dataclass
class Prepared:
    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    pre_processed: bool = False


def quantized_ops(model: onnx.ModelProto) -> Counter:
    """Quantization op types already in the graph, with counts."""
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS)


def refuse_if_quantized(model: onnx.ModelProto, what: str = "quantize") -> None:
    found = quantized_ops(model)
    if found:
        ops = ", ".join(f"{op}x{n}" for op, n in found.most_common())
        raise ModelError(f"the model is already quantized ({ops}); {what} needs a float model",
                         "start from the float export of this model")


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn top-level ``Constant`` nodes holding numeric tensors into initializers, in place."""
    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if value is None:
            keep.append(node)
            continue
        value.name = node.output[0]
        graph.initializer.append(value)
        moved += 1
    if moved:
        _set_nodes(graph, keep)
    return moved


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    import numpy as np

    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type != onnx.TensorProto.STRING:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        scalars = {"value_float": np.float32(attr.f), "value_int": np.int64(attr.i),
                   "value_floats": np.asarray(attr.floats, np.float32), "value_ints": np.asarray(attr.ints, np.int64)}
        if attr.name in scalars:
            return numpy_helper.from_array(np.asarray(scalars[attr.name]))
    return None  # sparse or string constants stay nodes


def bypass_weight_identities(model: onnx.ModelProto) -> int:
    """Point readers of ``Identity(initializer)`` at the initializer itself (torch's shared weights)."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    _set_nodes(graph, [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)])
    return len(alias)


def negative_dims_to_symbolic(model: onnx.ModelProto) -> int:
    """Make ``dim_value: -1`` (some exporters' way of saying "any") a symbolic dim, in place; every
    tool (onnx shape inference, onnxruntime's symbolic shape inference) reads -1 as a real size."""
    changed = 0
    for value in list(model.graph.input) + list(model.graph.output):
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
                dim.dim_param = f"{value.name}_dim{index}"
                changed += 1
    return changed


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove initializers from the graph inputs (IR < 4 style) and raise the IR version to 4."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    dropped = len(graph.input) - len(inputs)
    if dropped:
        del graph.input[:]
        graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    return dropped


def ensure_opset(model: onnx.ModelProto, minimum: int = QDQ_OPSET) -> tuple[onnx.ModelProto, str | None]:
    current = default_opset(model)
    if current >= minimum:
        return model, None
    return upgrade_opset(model, minimum), f"upgraded opset {current} -> {minimum} (quantized ops need it)"


def pre_process(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str, bool]:
    """``quant_pre_process``; on failure retry without symbolic shape inference, then skip.
    Returns (model, what happened, whether it ran)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    failures = []
    for skip_symbolic in (False, True):
        def tool(src: Path, dst: Path, _work: Path, skip: bool = skip_symbolic) -> None:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip, auto_merge=True)

        try:
            result = via_files(model, tool)
        except Exception as exc:  # recorded below and retried: the tool raises bare Assertion/Key errors
            failures.append(f"{type(exc).__name__}: {str(exc).strip()[:160] or 'no message'}")
            continue
        if not failures:
            return result, "quant_pre_process: symbolic shape inference and ORT optimization applied", True
        return result, f"quant_pre_process ran without symbolic shape inference (it failed: {failures[0]})", True
    return model, f"quant_pre_process skipped: it failed ({'; '.join(failures)})", False


def fold_for_quantization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Exact rewrites that leave the quantizer fewer tensors to round (:mod:`onnxopt.passes.fold`):
    constant affine ops into the Convs around them, hardswish's four ops into
    ``x * HardSigmoid(x)`` (the HardSigmoid stays float, its [0, 1] output rounds finely).

    Fewer rounded tensors means less quantization error and fewer quantize/dequantize steps
    between the convs."""
    from onnxopt.passes.fold import fold_affine, fold_into_consumers, fuse_hardswish
    from onnxopt.passes.graph import to_graph, to_model

    graph = to_graph(model)
    folded = fold_affine(graph)
    fused = fuse_hardswish(graph, gate=True)  # before folding into Convs, which would take its "/ 6"
    folded += fold_into_consumers(graph)
    notes = [f"folded {folded} constant affine node(s) into Convs"] if folded else []
    if fused:
        notes.append(f"rewrote {fused} hardswish pattern(s) (x * relu6(x + 3) / 6) as x * HardSigmoid(x)")
    return (to_model(graph, like=model) if folded or fused else model), notes


def prepare(model: onnx.ModelProto, *, opset: int = QDQ_OPSET, run_pre_process: bool = True,
            what: str = "quantize", fold: bool = False) -> Prepared:
    """A quantizable copy of ``model`` and the notes saying how it was made so."""
    refuse_if_quantized(model, what)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes = []
    moved = constants_to_initializers(work)
    if moved:
        notes.append(f"moved {moved} Constant-node tensor(s) to initializers")
    shared = bypass_weight_identities(work)
    if shared:
        notes.append(f"bypassed {shared} Identity node(s) sharing weights")
    negative = negative_dims_to_symbolic(work)
    if negative:
        notes.append(f"made {negative} input/output dim(s) of -1 symbolic")
    dropped = drop_initializer_inputs(work)
    if dropped:
        notes.append(f"removed {dropped} initializer(s) listed as graph inputs (IR < 4)")
    work, upgraded = ensure_opset(work, opset)
    if upgraded:
        notes.append(upgraded)
    if fold:
        work, folded = fold_for_quantization(work)
        notes.extend(folded)
    ran = False
    if run_pre_process:
        work, note, ran = pre_process(work)
        notes.append(note)
    named = name_nodes(work)  # after pre-processing, which may add unnamed nodes
    if named:
        notes.append(f"named {named} unnamed node(s) so they can be kept in float by name")
    return Prepared(work, notes, ran)


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed top-level node a unique name ``<op>_<index>``, in place."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for index, node in enumerate(model.graph.node):
        if node.name:
            continue
        name, suffix = f"{node.op_type}_{index}", 0
        while name in taken:
            suffix += 1
            name = f"{node.op_type}_{index}_{suffix}"
        node.name = name
        taken.add(name)
        named += 1
    return named


def _set_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    kept = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del graph.node[:]
    graph.node.extend(kept)
