"""Per-node latency from onnxruntime's profiler, attributed back to the float model's nodes.

The kernel times come from the pass context's measurer (its node profile runs in the
measurement child, on the target profile); this module maps them to the float model.

onnxruntime rewrites the graph before it runs it, so its kernel names are not the model's node
names. What we saw on the corpus (onnxruntime 1.2x-1.3x, CPU, ``graph_optimization_level=all``):

- float: Conv+BN+activation fuse into one NCHWc ``Conv`` named after the *output tensor* of the
  last fused node plus ``_nchwc`` (``/Relu_output_0_nchwc``); layout ``ReorderInput/Output`` nodes
  get ``_token_<n>`` names; other fusions prefix or suffix the name (``fused /fc1/Gemm``,
  ``/Mul/QuickGeluFusion/``).
- int8 QDQ: a fused ``QLinearConv`` keeps the Conv's name plus ``_token_<n>``; unfused boundary
  Q/DQ nodes are named ``<tensor>_QuantizeLinear`` / ``<tensor>_DequantizeLinear`` (the
  quantizer's convention); NHWC ``Transpose`` nodes get fresh names.

So a kernel is mapped by its name stripped of those decorations (a node or a tensor of the float
model), else by its output tensors in the optimized graph (saved next to the profile), else by
its neighbours there. Each float node then belongs to an *anchor*: the nearest quantizable node
upstream (a Conv owns the BN and activation fused into it), so float and int8 costs compare like
for like. A standalone QuantizeLinear is overhead of the quantized node that reads it, a
DequantizeLinear of the node that produced its input.

Example::

    anchors = Anchors(float_model, quantizer.quantizable())
    timing = profile_nodes(int8_model, feeds, anchors, ctx.measurer)
    timing.per_anchor["/stem/Conv"]   # median microseconds per run
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.passes.measurer import Measurer, NodeTimes

SUFFIXES = ("_kernel_time", "_nchwc", "_QuantizeLinear_Output", "_DequantizeLinear_Output", "_quantized",
            "_quant", "_output_quantized")
TOKEN = re.compile(r"(_token_\d+)+$")
FUSION = re.compile(r"(/\w*Fusion/?|/duplicated)$")
UPSTREAM_STEPS = 16  # how far a non-quantizable node looks for the quantizable node that owns it
# onnxruntime fuses these into the Conv/Gemm before them, in float (NCHWc Conv+activation, Conv+BN)
# and in int8 (the quantizer drops Relu/Clip after a QLinearConv): one decision for the group
HEADS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FOLLOWERS = frozenset({"Relu", "Clip", "BatchNormalization", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh"})


class Anchors:
    """The float model's nodes and tensors, and which quantizable node each node's cost belongs to."""

    def __init__(self, model: onnx.ModelProto, quantizable: Iterable[str]):
        graph = model.graph
        self.ops = {n.name: n.op_type for n in graph.node if n.name}
        self.quantizable = set(quantizable)
        self.producer = {o: n.name for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node.name)
        inputs = {n.name: [i for i in n.input if i in self.producer] for n in graph.node}
        self.group = self._groups(graph, inputs)
        self.owner = {name: self._owner(name, inputs) for name in self.ops}

    def _groups(self, graph: onnx.GraphProto, inputs: Mapping[str, list[str]]) -> dict[str, str]:
        """quantizable node -> its group's head (itself, or the Conv/Gemm a follower fuses into)."""
        group: dict[str, str] = {}
        for node in graph.node:  # topological order: a producer's group is known before its reader's
            if node.name not in self.quantizable:
                continue
            first = inputs.get(node.name) or []
            head = self.producer[first[0]] if first else None
            fusable = (node.op_type in FOLLOWERS and head in group and len(self.consumers[first[0]]) == 1
                       and self.ops.get(head) in HEADS | FOLLOWERS)
            group[node.name] = group[head] if fusable else node.name
        return group

    def members(self) -> dict[str, list[str]]:
        """group head -> the quantizable nodes it decides for (itself first)."""
        found: dict[str, list[str]] = defaultdict(list)
        for name, head in self.group.items():
            found[head].append(name)
        return dict(found)

    def _owner(self, name: str, inputs: Mapping[str, list[str]]) -> str | None:
        for _ in range(UPSTREAM_STEPS):
            if name in self.quantizable:
                return self.group[name]
            upstream = inputs.get(name) or []
            if not upstream:
                return None
            name = self.producer[upstream[0]]
        return None

    def of_tensor(self, tensor: str, *, reader: bool = False) -> str | None:
        """The anchor a tensor's cost belongs to: its producer's, or (``reader``, and for graph
        inputs) the first quantizable reader's."""
        if reader or tensor not in self.producer:
            readers = self.consumers.get(tensor, [])
            preferred = [r for r in readers if r in self.quantizable] or readers
            owners = [self.owner.get(r) for r in preferred]
            return next((o for o in owners if o), None)
        return self.owner.get(self.producer[tensor])

    def of_name(self, name: str) -> str | None:
        """The anchor of a kernel, from its name alone (None when the name says nothing)."""
        base = FUSION.sub("", TOKEN.sub("", name.removeprefix("fused ")))
        for suffix in SUFFIXES:
            base = TOKEN.sub("", base.removesuffix(suffix))
        if base in self.ops:
            return self.owner.get(base)
        for marker, reader in (("_QuantizeLinear", True), ("_DequantizeLinear", False)):
            if base.endswith(marker):
                return self.of_tensor(base.removesuffix(marker), reader=reader)
        if base in self.producer or base in self.consumers:
            return self.of_tensor(base)
        return None


def clean_tensor(name: str) -> str:
    for suffix in SUFFIXES + ("_QuantizeLinear", "_DequantizeLinear"):
        name = TOKEN.sub("", name.removesuffix(suffix))
    return name


def attribute(anchors: Anchors, optimized: onnx.ModelProto, kernels: Iterable[str]) -> dict[str, str | None]:
    """kernel name -> anchor, using the optimized graph (the one onnxruntime ran) where names fail."""
    nodes = {n.name: n for n in optimized.graph.node if n.name}
    by_output = {o: n.name for n in optimized.graph.node for o in n.output}
    readers: dict[str, list[str]] = defaultdict(list)
    for node in optimized.graph.node:
        for name in node.input:
            readers[name].append(node.name)
    found = {k: anchors.of_name(k) for k in kernels}
    for kernel in [k for k, a in found.items() if a is None and k in nodes]:
        node = nodes[kernel]
        reader = node.op_type == "QuantizeLinear"
        tensors = [clean_tensor(t) for t in (node.input[:1] if reader else node.output)]
        known = [t for t in tensors if t in anchors.producer or t in anchors.consumers]
        found[kernel] = next((a for a in (anchors.of_tensor(t, reader=reader) for t in known) if a), None)
    for kernel in [k for k, a in found.items() if a is None and k in nodes]:  # layout nodes: a neighbour's
        node = nodes[kernel]
        near = [r for o in node.output for r in readers[o]] + [by_output.get(i, "") for i in node.input]
        found[kernel] = next((found.get(n) for n in near if found.get(n)), None)
    return found


@dataclass
class Timing:
    """Median microseconds per run: per anchor, unattributed, and the sum of all kernels; ``note`` says
    when the kernels ran on another provider than the target's."""

    per_anchor: dict[str, float]
    total_us: float
    unattributed_us: float
    runs: int
    kernels: dict[str, str | None] = field(default_factory=dict)  # kernel -> anchor, to check the mapping
    note: str | None = None


def off_target(times: NodeTimes) -> str | None:
    """Said when the kernels were timed on another provider than the target's (the profile allowed
    fallback and the target's provider could not run here)."""
    if times.provider == times.target:
        return None
    return (f"WARNING: latency-aware timed the nodes on {times.provider}, not on the profile's {times.target} "
            "(not available here; the profile allows fallback): its choice holds for this machine, not "
            "necessarily for the target")


def profile_nodes(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], anchors: Anchors,
                  measurer: Measurer, *, budget_s: float = 1.5) -> Timing:
    """Per-anchor median kernel time per run of ``model``, from the measurer's node profile over
    about ``budget_s`` of runs."""
    times = measurer.nodes(model, feeds, budget_s=budget_s)
    medians = {k: statistics.median(v) for k, v in times.kernels.items() if v}
    mapping = attribute(anchors, times.optimized, medians)
    per_anchor: dict[str, float] = defaultdict(float)
    for kernel, us in medians.items():
        per_anchor[mapping[kernel] or ""] += us
    unattributed = per_anchor.pop("", 0.0)
    return Timing(dict(per_anchor), sum(medians.values()), unattributed, times.runs, mapping, off_target(times))
