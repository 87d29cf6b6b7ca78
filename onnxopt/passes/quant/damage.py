"""Which quantized tensors cost the output most, measured: take one tensor's Q -> DQ pair (or one
weight's DQ) out of the all-int8 QDQ model at a time and see how much of the output error goes away.

Why not rank by SQNR alone (:func:`onnxopt.passes.quant.mixed.rank_nodes`)? SQNR says where the noise is
large, not where it matters: noise in a squeeze-excite branch or before a saturating sigmoid barely
reaches the output, while noise in the first blocks is amplified by everything after them, so
the measured order can reach a target with fewer nodes in float (docs/benchmarks.md). Gains are
measured one at a time and do not add up exactly, so :mod:`onnxopt.passes.quant.mixed` searches
both orders.

A tensor stays quantized while its producer or any consumer is quantized (the QDQ quantizer puts
Q -> DQ on both sides), so a measured tensor brings its producer and consumers into the fallback
order together; one node at a time, no single node would show a gain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.agreement import row_cosines


@dataclass(frozen=True)
class TensorGain:
    """How much output error (1 - worst output's mean cosine) goes away when ``tensor`` is not
    quantized, and the nodes that must stay in float for that."""

    tensor: str
    gain: float
    nodes: tuple[str, ...]

    def row(self) -> dict:
        return {"tensor": self.tensor, "error_removed": float(f"{self.gain:.3g}"), "nodes": list(self.nodes)}


def output_error(reference: Sequence[Sequence[np.ndarray]], outputs: Sequence[Sequence[np.ndarray]]) -> float:
    """1 - the worst output's mean per-sample cosine; both indexed [sample][output]."""
    worst = 1.0
    for k in range(len(reference[0])):
        ref = np.concatenate([np.asarray(r[k], np.float64).reshape(1, -1) for r in reference])
        out = np.concatenate([np.asarray(o[k], np.float64).reshape(1, -1) for o in outputs])
        worst = min(worst, float(np.mean(row_cosines(ref, out))))
    return 1.0 - worst


def tensor_gains(float_model: onnx.ModelProto, qdq: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
                 reference: Sequence[Sequence[np.ndarray]], weights: bool = False) -> list[TensorGain]:
    """Every quantized activation of ``qdq`` (and with ``weights`` every weight) with the error its
    rounding costs, largest first. ``reference`` holds ``float_model``'s outputs on ``feeds``.

    Weights are off for the fallback order: measured one at a time some rank high, yet on PP-OCR
    det an order that includes them needed more nodes in float to meet the target
    (docs/benchmarks.md)."""
    work = onnx.ModelProto()
    work.CopyFrom(qdq)
    candidates, folded = _candidates(float_model, work, weights=weights)
    base = output_error(reference, run_feeds(work, feeds))
    gains = []
    for tensor, (dq_indices, nodes) in candidates.items():
        saved = _unquantize(work, tensor, dq_indices, folded)
        error = output_error(reference, run_feeds(work, feeds))
        for i, node in saved.items():
            work.graph.node[i].CopyFrom(node)
        gains.append(TensorGain(tensor, base - error, tuple(dict.fromkeys(n for n in nodes if n))))
    gains.sort(key=lambda g: -g.gain)
    return gains


def without_pairs(float_model: onnx.ModelProto, qdq: onnx.ModelProto, tensors=None) -> onnx.ModelProto:
    """``qdq`` with the Q -> DQ pairs of ``tensors`` taken out (activations or weights by their float
    names; default: every activation, leaving only the weights quantized)."""
    work = onnx.ModelProto()
    work.CopyFrom(qdq)
    candidates, folded = _candidates(float_model, work, weights=tensors is not None)
    for tensor in candidates if tensors is None else tensors:
        _unquantize(work, tensor, candidates[tensor][0], folded)
    return work


def _candidates(float_model: onnx.ModelProto, work: onnx.ModelProto, weights: bool) -> tuple[dict, dict]:
    """(tensor -> (its DQ node indices, the nodes that must stay float to un-round it), the folded
    activations to put back); weights too if asked."""
    pairs = _activation_pairs(work)
    folded = _folded_activations(float_model, work)
    candidates = {tensor: (dq, (producer, *consumers)) for tensor, (producer, dq, consumers) in pairs.items()}
    if weights:
        candidates.update(_weight_dequantizers(float_model, work))
    return candidates, folded


def _unquantize(work: onnx.ModelProto, tensor: str, dq_indices: list[int], folded: dict) -> dict[int, onnx.NodeProto]:
    """Turn the DQ nodes of ``tensor`` into an Identity of the float tensor (or the Relu/Clip the
    quantizer folded into its Q), in place: same output names, so graph outputs and consumers keep
    working, and onnxruntime drops the Identity when it loads. Returns the replaced nodes by index."""
    saved = {}
    for i in dq_indices:
        node = work.graph.node[i]
        saved[i] = onnx.NodeProto()
        saved[i].CopyFrom(node)
        outputs = list(node.output)
        node.CopyFrom(folded[tensor](outputs, node.name) if tensor in folded else
                      onnx.helper.make_node("Identity", [tensor], outputs, name=node.name))
    return saved


def node_order(gains: Sequence[TensorGain], head_of: Mapping[str, str]) -> list[str]:
    """Fallback candidates (group heads) in the order of the tensors that need them, costliest first."""
    order: dict[str, None] = {}
    for gain in gains:
        if gain.gain <= 0:
            break
        for name in gain.nodes:
            if name in head_of:
                order.setdefault(head_of[name])
    return list(order)


def _folded_activations(float_model: onnx.ModelProto, work: onnx.ModelProto) -> dict:
    """Tensor -> a maker of the Relu/Clip the quantizer folded into the Q before it.

    The QDQ quantizer drops a Relu/Clip after a Conv/Add and gives the Conv's output the activation's
    name, its Q doing the clipping; taking that pair out must put the activation back. A Clip's
    bounds are copied into ``work`` (the quantizer removed them with the node)."""
    graph = work.graph
    producer_op = {o: n.op_type for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    makers = {}
    for node in float_model.graph.node:
        if node.op_type not in ("Relu", "Clip") or producer_op.get(node.output[0], node.op_type) == node.op_type:
            continue
        for name in node.input[1:]:
            if name and name not in inits and name in float_inits:
                graph.initializer.append(float_inits[name])
                inits.add(name)

        def make(outputs, name, act=node):
            return onnx.helper.make_node(act.op_type, [act.output[0], *act.input[1:]], outputs, name=name,
                                         **{a.name: onnx.helper.get_attribute_value(a) for a in act.attribute})
        makers[node.output[0]] = make
    return makers


def _weight_dequantizers(float_model: onnx.ModelProto, work: onnx.ModelProto) -> dict[str, tuple[list[int], tuple]]:
    """Float weight name -> (indices of the DequantizeLinear nodes that restore it, the nodes reading
    it). The float weights are added to ``work`` so a DQ can become an Identity of one. Int32 biases
    are left out: their step is the product of two scales, far below anything else's."""
    graph = work.graph
    inits = {i.name: i for i in graph.initializer}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node}
    readers = _readers(graph)
    found: dict[str, tuple[list[int], tuple]] = {}
    for i, node in enumerate(graph.node):
        quantized = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantized is None or quantized.data_type == onnx.TensorProto.INT32:
            continue
        for j in readers.get(node.output[0], []):
            consumer = graph.node[j]
            original = float_nodes.get(consumer.name)
            slot = list(consumer.input).index(node.output[0])
            if original is None or slot >= len(original.input) or original.input[slot] not in float_inits:
                continue
            weight = original.input[slot]
            indices, readers_of = found.get(weight, ([], ()))
            found[weight] = (indices + [i] if i not in indices else indices, (*readers_of, consumer.name))
    for weight in found:
        if weight not in inits:
            graph.initializer.append(float_inits[weight])
    return found


def _activation_pairs(model: onnx.ModelProto) -> dict[str, tuple[str | None, list[int], list[str]]]:
    """Quantized activation -> (its producer's name, indices of its DequantizeLinear nodes, the
    names of the nodes reading them). Weights (a constant before the Q or DQ) are not activations."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n.name for n in graph.node for o in n.output}
    readers = _readers(graph)
    pairs = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        dq_indices = [i for i in readers.get(node.output[0], []) if graph.node[i].op_type == "DequantizeLinear"]
        if not dq_indices:
            continue
        consumers = [graph.node[j].name for i in dq_indices for j in readers.get(graph.node[i].output[0], [])]
        pairs[node.input[0]] = (producer.get(node.input[0]), dq_indices, consumers)
    return pairs


def _readers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Tensor name -> indices of the nodes reading it."""
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(i)
    return readers


def run_feeds(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, dict(feed)) for feed in feeds]
