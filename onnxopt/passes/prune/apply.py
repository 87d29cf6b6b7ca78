"""Cutting: turn a set of removed classes into sliced constants, fixed attributes and a new model.

Steps, in order: (1) a :class:`Plan` says for every atom whether it survives (and
:func:`estimate_macs` what the model would cost); (2) classes whose
removal would leave some tensor with no channels are put back (``guard``); (3) every recorded
``ConstCut`` slices its constant (new constants: weights may be shared by nodes we do not cut);
(4) fix-ups rewrite Reshape targets, Split sizes, Slice bounds and group counts; (5) stale
intermediate shapes are dropped and re-inferred.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.model import infer_shapes
from onnxopt.passes.graph import const_value, to_model
from onnxopt.passes.prune.analyze import Result
from onnxopt.passes.prune.groups import channel_axes


class Plan:
    """Which atoms survive; ``mask`` and ``kept`` read atom arrays (FIXED positions always survive)."""

    def __init__(self, result: Result, removed: set[int]):
        self.removed = set(removed)
        self.keep_atom = ~np.isin(result.classes, np.array(sorted(self.removed), dtype=np.int64))

    def mask(self, arr: np.ndarray) -> np.ndarray:
        return np.where(arr < 0, True, self.keep_atom[np.maximum(arr, 0)])

    def kept(self, vec: np.ndarray) -> np.ndarray:
        return np.nonzero(self.mask(np.asarray(vec).reshape(-1)))[0]


def estimate_macs(result: Result, removed: set[int]) -> int:
    """MACs after removing ``removed``: each layer scales by its kept input and output fractions."""
    plan = Plan(result, removed)
    total = 0
    for mac in result.an.macs:
        macs = result.node_macs.get(mac.node.name or mac.node.outputs[0].name, 0)
        out_frac = plan.kept(mac.out_atoms).size / mac.out_atoms.size if mac.out_atoms is not None else 1.0
        in_frac = plan.kept(mac.in_atoms).size / mac.in_atoms.size if mac.in_atoms is not None else 1.0
        total += macs * (out_frac if mac.depthwise else out_frac * in_frac)
    untouched = sum(result.node_macs.values()) - sum(
        result.node_macs.get(m.node.name or m.node.outputs[0].name, 0) for m in result.an.macs)
    return int(total + untouched)


def guard(result: Result, removed: set[int]) -> set[int]:
    """Drop removals that would empty a tensor's channel axis (e.g. a thin Slice of a group)."""
    removed = set(removed)
    changed = True
    while changed and removed:
        changed = False
        plan = Plan(result, removed)
        for arr in result.an.atoms.values():
            mask = plan.mask(arr)
            for axis in channel_axes(arr):
                if not mask.any(axis=tuple(i for i in range(arr.ndim) if i != axis)).any():
                    removed -= {int(result.classes[a]) for a in np.unique(arr[arr >= 0]).tolist()}
                    changed = True
                    break
    return removed


def cut(result: Result, removed: set[int], like: onnx.ModelProto) -> onnx.ModelProto:
    """Apply the removal to the analysed graph (which is consumed) and return the new model."""
    import onnx_graphsurgeon as gs

    plan = Plan(result, removed)
    graph = result.graph
    pending: dict[tuple[int, int], tuple[object, int, np.ndarray, bool]] = {}
    for item in result.an.cuts:
        key = (id(item.node), item.index)
        if key not in pending:
            pending[key] = (item.node, item.index, const_value(item.node.inputs[item.index]), False)
        node, index, value, changed = pending[key]
        kept = plan.kept(item.atoms)
        if kept.size < value.shape[item.axis]:
            pending[key] = (node, index, np.take(value, kept, axis=item.axis), True)
    taken = set(graph.tensors().keys())
    for node, index, value, changed in pending.values():
        if changed:
            stem = node.inputs[index].name or "const"
            name, n = f"{stem}_pruned", 1
            while name in taken:
                name, n = f"{stem}_pruned_{n}", n + 1
            taken.add(name)
            node.inputs[index] = gs.Constant(name, np.ascontiguousarray(value))
    for fix in result.an.fixups:
        fix(plan)
    keep_shapes = {t.name for t in [*graph.inputs, *graph.outputs]}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep_shapes:
            tensor.shape = None
    return infer_shapes(to_model(graph, like=like))


def kept_outputs(result: Result, removed: set[int]) -> dict[str, np.ndarray]:
    """Output tensor name -> original indices of the output channels each producer keeps."""
    plan = Plan(result, removed)
    return {item.node.outputs[0].name: plan.kept(item.atoms) for item in result.an.cuts if item.role == "out"}


def kept_channels(result: Result, removed: set[int]) -> dict[str, tuple[int, np.ndarray]]:
    """Tensor name -> (channel axis, original indices kept) for tensors with one channel axis that
    lose channels: how to read a pruned layer's input out of the unpruned model."""
    plan = Plan(result, removed)
    found = {}
    for name, arr in result.an.atoms.items():
        axes = channel_axes(arr)
        if len(axes) == 1:
            kept = plan.kept(arr.reshape(-1))
            if kept.size < arr.size:
                found[name] = (axes[0], kept)
    return found
