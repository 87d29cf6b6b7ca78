"""Run the channel analysis on a model: shapes, constant folding, handlers in graph order, groups.

Shapes come from onnx shape inference on a copy whose inputs are fixed (the caller's ``shapes``,
and batch 1 for a symbolic leading dim); the graph that gets edited is the original one, so a
pruned model keeps its dynamic dims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.model import fix_input_shapes, infer_shapes, input_specs
from onnxopt.passes.graph import to_graph
from onnxopt.passes.prune import handlers, handlers_shape  # noqa: F401  (importing them registers the handlers)
from onnxopt.passes.prune.groups import HANDLERS, Analysis, Group, build_groups, unknown
from onnxopt.stats import layer_costs


@dataclass
class Result:
    """The analysis of one model: the editable graph, its state, groups and per-node MACs."""

    graph: object
    an: Analysis
    groups: list[Group]
    classes: np.ndarray  # class of every atom
    node_macs: dict[str, int]
    allocation: list | None = None  # strategy=sensitivity: each group's curve and chosen ratio


def shape_table(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple | None]:
    """Tensor name -> dims (int, or None where symbolic) after fixing inputs."""
    wanted = dict(shapes or {})
    for spec in input_specs(model):
        if spec.name not in wanted and spec.dims and not isinstance(spec.dims[0], int):
            wanted[spec.name] = [1, *[d if isinstance(d, int) else 0 for d in spec.dims[1:]]]
    wanted = {k: v for k, v in wanted.items() if all(d > 0 for d in v)}
    sized = fix_input_shapes(model, wanted) if wanted else infer_shapes(model)
    table: dict[str, tuple | None] = {}
    for value in [*sized.graph.input, *sized.graph.value_info, *sized.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            table[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return table


def analyze(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None) -> Result:
    """Channel groups of ``model``; the returned graph is a fresh, constant-folded copy to cut."""
    dims = shape_table(model, shapes)
    graph = to_graph(model)
    # Paddle keeps weights in Constant nodes and reshapes biases at run time; folding makes them
    # plain constants (shape folding only where shapes are static, so dynamic dims survive)
    graph.fold_constants(error_ok=True, fold_shapes=True).cleanup(remove_unused_graph_inputs=False).toposort()
    an = Analysis(graph, dims)
    for node in graph.nodes:
        HANDLERS.get(node.op, unknown)(node, an)
    for out in graph.outputs:
        an.pin(out, f"graph output {out.name!r} keeps its shape")
    for name in _subgraph_reads(graph):
        tensor = graph.tensors().get(name)
        if tensor is not None:
            an.pin(tensor, f"{name!r} is read inside a subgraph")
    node_macs = {c.name: c.macs or 0 for c in layer_costs(model, shapes)}
    groups, classes = build_groups(an, node_macs)
    return Result(graph, an, groups, classes, node_macs)


def _subgraph_reads(graph) -> set[str]:
    names: set[str] = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = value if isinstance(value, list) else [value]
            for sub in subs:
                if hasattr(sub, "nodes"):
                    names |= {t.name for n in sub.nodes for t in n.inputs}
    return names


def coverage(result: Result) -> dict:
    """Fraction of MACs in layers whose input or output channels belong to a prunable group."""
    cls = result.classes
    free = {c for g in result.groups for c in set(g.classes) - set(g.pinned)}
    total = sum(result.node_macs.values())
    covered = 0
    for mac in result.an.macs:
        name = mac.node.name or mac.node.outputs[0].name
        touched = [v for v in (mac.in_atoms, mac.out_atoms) if v is not None]
        if any(int(cls[a]) in free for v in touched for a in np.unique(v[v >= 0]).tolist()):
            covered += result.node_macs.get(name, 0)
    return {"macs_total": total, "macs_in_prunable_groups": covered,
            "fraction": round(covered / total, 4) if total else 0.0}
