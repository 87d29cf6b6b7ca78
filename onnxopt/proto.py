"""Protobuf-level helpers that every layer needs and that never touch files: iterate a model's
tensors, take its weight-less skeleton, and know its serialized size without reading payloads.

Why not plain protobuf calls: ``ModelProto.ByteSize()`` and every read of a ``raw_data`` field copy
the weight bytes in upb (1.5 s a call on VGG-19), and the checker and shape inference serialize the
whole model; the skeleton and ``serialized_size`` avoid both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import onnx


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


SKELETON_MAX_ELEMENTS = 4096


def skeleton(model: onnx.ModelProto, max_elements: int = SKELETON_MAX_ELEMENTS) -> onnx.ModelProto:
    """The model without its large weights: each initializer above ``max_elements`` becomes a graph
    input of the same type and shape. Shape inference and structural checks need only this, and
    it avoids serializing hundreds of MB (small tensors stay: they hold shapes and axes)."""
    light = onnx.ModelProto()
    graph = model.graph
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    listed = {v.name for v in graph.input}
    g.input.extend(graph.input)
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= max_elements:
            g.initializer.append(tensor)
        elif tensor.name not in listed:
            g.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    light.ir_version = max(light.ir_version, 4)  # initializers need not be inputs from IR 4 on
    return light


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()`` without reading large weight payloads: upb copies a bytes field on every
    access, which costs seconds per call on a VGG-sized model. Exact for raw_data tensors whose
    length matches their dims (the checker's invariant)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    extra = 0
    for tensor in model.graph.initializer:
        itemsize = _ITEMSIZE.get(tensor.data_type)
        if not (itemsize and tensor.HasField("raw_data") and math.prod(tensor.dims) > SKELETON_MAX_ELEMENTS):
            light.graph.initializer.append(tensor)
            continue
        stub = onnx.TensorProto(dims=tensor.dims, data_type=tensor.data_type, external_data=tensor.external_data,
                                metadata_props=tensor.metadata_props)
        # proto2 counts whether a field is set; ListFields() would copy raw_data, so ask field by field
        for optional in ("name", "doc_string", "data_location"):
            if tensor.HasField(optional):
                setattr(stub, optional, getattr(tensor, optional))
        if tensor.HasField("segment"):
            stub.segment.CopyFrom(tensor.segment)
        light.graph.initializer.append(stub)
        payload = math.prod(tensor.dims) * itemsize
        body = stub.ByteSize()
        full = body + 1 + _varint_len(payload) + payload
        extra += full - body + _varint_len(full) - _varint_len(body)
    graph = light.graph.ByteSize()  # the graph's own length prefix grows with it too
    return light.ByteSize() + extra + _varint_len(graph + extra) - _varint_len(graph)


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of a protobuf message but one (to leave the heavy one behind)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field (FieldDescriptor.label is gone in protobuf 7)
            getattr(target, field.name).extend(value)
        elif field.message_type:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
             onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
             onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT32: 4,
             onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT32: 4, onnx.TensorProto.UINT64: 8}
