"""onnx-graphsurgeon at the edge of a pass: ModelProto -> Graph -> ModelProto, and constant lookup.

``to_model`` keeps what graphsurgeon does not carry (IR version, metadata, producer) so a pass
changes only what it means to change; it runs ``cleanup`` and ``toposort`` first, which assume
nothing and leave a graph with no dead nodes, in execution order.
"""

from __future__ import annotations

import numpy as np
import onnx


def to_graph(model: onnx.ModelProto):
    import onnx_graphsurgeon as gs

    return gs.import_onnx(model)


def to_model(graph, like: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    model.domain = like.domain
    model.model_version = like.model_version
    model.doc_string = like.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    return model


def const_value(tensor) -> np.ndarray | None:
    """The value of a constant tensor: a graphsurgeon Constant, a ``Constant`` node's output, or
    an ``Identity`` of either (torch's exporter shares weights that way); else None."""
    import onnx_graphsurgeon as gs

    for _ in range(8):  # bounded walk through Identity chains
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        if len(tensor.inputs) != 1:
            return None
        producer = tensor.inputs[0]
        if producer.op == "Constant" and isinstance(producer.attrs.get("value"), gs.Constant):
            return np.asarray(producer.attrs["value"].values)
        if producer.op != "Identity":
            return None
        tensor = producer.inputs[0]
    return None


def only_consumer(tensor, graph):
    """The single node reading ``tensor``, or None if it has several readers or is a graph output."""
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]
