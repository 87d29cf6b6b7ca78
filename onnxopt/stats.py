"""What a model costs: nodes, parameters, multiply-accumulates, bytes, the largest layers.

MACs need tensor shapes. Dynamic batch dims count as 1; any other symbolic dim makes the MACs of
the layers it reaches unknown, and the result says how many layers that was instead of guessing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import onnx
from pydantic import BaseModel

from onnxopt.model import fix_input_shapes, infer_shapes, input_specs
from onnxopt.proto import iter_tensors, serialized_size, skeleton

# dtypes that hold learned weights (shape tensors and indices are not parameters)
WEIGHT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
    onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
}
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
           "QLinearMatMul", "MatMulNBits", "FusedConv", "FusedMatMul", "FusedGemm")


class LayerCost(BaseModel):
    name: str
    op_type: str
    params: int
    macs: int | None


class ModelStats(BaseModel):
    """Cost summary of one model; ``macs`` is None when some layer's shapes are unknown."""

    nodes: int
    params: int
    macs: int | None
    macs_known: int
    layers_unknown: int
    size_bytes: int
    opset: int
    op_histogram: dict[str, int]


def _tensor_elements(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims) if tensor.dims else 1


def count_params(model: onnx.ModelProto) -> int:
    """Elements of weight-typed initializers and Constant tensors (Paddle keeps weights there)."""
    return sum(_tensor_elements(t) for t in iter_tensors(model.graph) if t.data_type in WEIGHT_TYPES
               and _tensor_elements(t) > 1)


def _shape_table(model: onnx.ModelProto) -> dict[str, tuple]:
    table: dict[str, tuple] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            table[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
            )
    for tensor in model.graph.initializer:
        table[tensor.name] = tuple(tensor.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    table[node.output[0]] = tuple(attr.t.dims)
    return table


def _known(dims: Sequence | None) -> bool:
    return dims is not None and all(isinstance(d, int) and d > 0 for d in dims)


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple]) -> int | None:
    """MACs of one compute node from its input/output shapes; None when a shape is unknown."""
    op = node.op_type
    out = shapes.get(node.output[0])
    if op in ("Conv", "ConvInteger", "FusedConv"):
        weight = shapes.get(node.input[1])
        return math.prod(out) * math.prod(weight[1:]) if _known(out) and _known(weight) else None
    if op == "QLinearConv":
        weight = shapes.get(node.input[3])
        return math.prod(out) * math.prod(weight[1:]) if _known(out) and _known(weight) else None
    if op == "ConvTranspose":
        data, weight = shapes.get(node.input[0]), shapes.get(node.input[1])
        return math.prod(data) * math.prod(weight[1:]) if _known(data) and _known(weight) else None
    if op in ("Gemm", "FusedGemm"):
        a = shapes.get(node.input[0])
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        if not (_known(out) and _known(a)):
            return None
        return math.prod(out) * (a[0] if trans_a else a[-1])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits"):
        a = shapes.get(node.input[0])
        return math.prod(out) * a[-1] if _known(out) and _known(a) else None
    return 0


def _node_params(node: onnx.NodeProto, weights: Mapping[str, int]) -> int:
    return sum(weights.get(name, 0) for name in node.input)


def layer_costs(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None) -> list[LayerCost]:
    """Params and MACs of every compute node (MAC_OPS), in graph order."""
    sized = _with_shapes(skeleton(model), shapes)
    table = _shape_table(sized)
    if any(_node_macs(n, table) is None for n in model.graph.node if n.op_type in MAC_OPS):
        table.update(_shape_table(_fold_shape_math(sized)))
    weights = {t.name: _tensor_elements(t) for t in model.graph.initializer if t.data_type in WEIGHT_TYPES}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in WEIGHT_TYPES:
                    weights[node.output[0]] = _tensor_elements(attr.t)
    return [
        LayerCost(name=node.name or node.output[0], op_type=node.op_type, params=_node_params(node, weights),
                  macs=_node_macs(node, table))
        for node in model.graph.node
        if node.op_type in MAC_OPS
    ]


def _fold_shape_math(sized: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes that onnx inference cannot see through Shape -> Gather -> Concat -> Reshape chains
    (Paddle's exports): fold that shape arithmetic with graphsurgeon, then infer again."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(sized)
    graph.fold_constants(fold_shapes=True, error_ok=True).cleanup()
    folded = gs.export_onnx(graph, do_type_check=False)
    folded.ir_version = sized.ir_version
    del folded.graph.value_info[:]
    return infer_shapes(folded)


def _with_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None) -> onnx.ModelProto:
    """A copy with given input shapes fixed and a dynamic leading batch dim set to 1."""
    weights = {t.name for t in model.graph.initializer}
    wanted = {k: v for k, v in (shapes or {}).items() if k not in weights}
    for spec in input_specs(model):
        if spec.name not in wanted and spec.dims and not isinstance(spec.dims[0], int):
            if all(isinstance(d, int) for d in spec.dims[1:]):
                wanted[spec.name] = [1, *spec.dims[1:]]
    if wanted:
        return fix_input_shapes(model, wanted)
    return model if len(model.graph.value_info) else infer_shapes(model)


def model_stats(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None) -> ModelStats:
    layers = layer_costs(model, shapes)
    unknown = sum(1 for layer in layers if layer.macs is None)
    known = sum(layer.macs or 0 for layer in layers)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelStats(
        nodes=len(model.graph.node),
        params=count_params(model),
        macs=None if unknown else known,
        macs_known=known,
        layers_unknown=unknown,
        size_bytes=serialized_size(model),
        opset=opset,
        op_histogram=dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    )


def largest_layers(model: onnx.ModelProto, k: int = 10, shapes: Mapping[str, Sequence[int]] | None = None
                   ) -> list[LayerCost]:
    layers = layer_costs(model, shapes)
    return sorted(layers, key=lambda layer: (layer.macs or 0, layer.params), reverse=True)[:k]
