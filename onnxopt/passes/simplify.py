"""``simplify``: onnxruntime's EP-independent optimizations, constant folding, affine folding, cleanup.

Order and why:
1. onnxruntime offline optimization at the BASIC level (EP-independent rewrites only);
2. graphsurgeon constant folding (Paddle keeps weights in ``Constant`` nodes, torch shares them
   through ``Identity``; both become plain constants);
3. folding of per-channel affine ops into the producing Conv / ConvTranspose / Gemm:
   BatchNormalization, and its Mul/Add (or Div/Sub) form, which onnxruntime leaves for Gemm and
   ConvTranspose (or for a constant first operand, as Paddle writes it); then of the ones left
   in front of Convs into those Convs (:mod:`onnxopt.passes.fold`);
4. hardswish spelled in four ops fused into HardSwish, where the opset has it (14+);
5. cleanup and toposort.

The output computes the same function as the input up to float rounding.
"""

from __future__ import annotations

import onnx

from onnxopt.model import PROTOBUF_LIMIT, default_opset, ort_optimize
from onnxopt.passes.base import Choice, Pass, PassConfig, PassContext, register
from onnxopt.passes.fold import HARDSWISH_OPSET, fold_affine, fold_into_consumers, fuse_hardswish
from onnxopt.passes.graph import to_graph, to_model
from onnxopt.proto import serialized_size


class SimplifyConfig(PassConfig):
    ort: bool = True
    fold_constants: bool = True
    fold_affine: bool = True
    fuse_hardswish: bool = True  # only where the model's opset has HardSwish (14+)


@register
class Simplify(Pass):
    """Make a model smaller and simpler without changing what it computes.

    Example: ``onnxopt optimize model.onnx -o out.onnx --passes simplify``.
    """

    name = "simplify"
    Config = SimplifyConfig
    tunable = {"ort": Choice((True, False))}

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        cfg: SimplifyConfig = self.config  # type: ignore[assignment]
        if cfg.ort:
            model = _ort_basic(model, ctx)
        graph = to_graph(model)
        if cfg.fold_constants:
            graph.fold_constants(error_ok=True).cleanup()
        if cfg.fold_affine:
            folded = fold_affine(graph)
            ctx.details["affine_folded"] = folded
            if folded:
                ctx.note(f"folded {folded} BatchNormalization/Mul/Add node(s) into the layers before them")
            into = fold_into_consumers(graph)
            ctx.details["affine_folded_forward"] = into
            if into:
                ctx.note(f"folded {into} constant Mul/Add node(s) into the Convs after them")
        if cfg.fuse_hardswish and default_opset(model) >= HARDSWISH_OPSET:
            fused = fuse_hardswish(graph)
            ctx.details["hardswish_fused"] = fused
            if fused:
                ctx.note(f"fused {fused} hardswish pattern(s) (x * relu6(x + 3) / 6) into HardSwish")
        return to_model(graph, like=model)


def _ort_basic(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    if serialized_size(model) >= PROTOBUF_LIMIT:
        ctx.note("skipped onnxruntime optimization: model above 2 GB")
        return model
    try:
        optimized = ort_optimize(model, "basic")
    except Exception as exc:  # an op onnxruntime cannot load: keep going with the other steps
        ctx.note(f"skipped onnxruntime optimization: {str(exc).splitlines()[0][:200]}")
        return model
    # onnxruntime may raise the IR version; keep the model's own opsets and metadata
    optimized.ir_version = max(model.ir_version, optimized.ir_version)
    return optimized
