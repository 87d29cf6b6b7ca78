"""Dynamic quantization: int8 weights, activations quantized at run time (no calibration data).

onnxruntime's CPU provider accelerates the MatMul family (``DynamicQuantizeMatMul``); ``Conv``
becomes ``ConvInteger``, which is much slower than float Conv on x86 CPUs, so the default op
types leave Conv in float. Ask for it with ``op_types=Conv|MatMul``.
"""

from __future__ import annotations

import onnx

from onnxopt.passes.quant.config import QuantizeConfig, ort_type
from onnxopt.passes.quant.ortio import via_files
from onnxopt.passes.quant.prepare import prepare
from onnxopt.passes.quant.static import match_nodes

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "Gather", "EmbedLayerNormalization")


def quantize_dynamic(model: onnx.ModelProto, cfg: QuantizeConfig, notes: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    prepared = prepare(model, run_pre_process=cfg.pre_process)
    notes.extend(prepared.notes)
    work = prepared.model
    weight = cfg.weight_type or "u8"  # s8 weights can saturate x86's u8 x s8 multiply-add and ran slower
    if weight not in ("u8", "s8"):
        raise _bad_type(weight)
    op_types = list(cfg.op_types) or list(DYNAMIC_OP_TYPES)
    excluded, unmatched = match_nodes(work, cfg.exclude)
    if unmatched:
        notes.append(f"exclude pattern(s) matched no node: {', '.join(unmatched)}")
    present = {n.op_type for n in work.graph.node} & set(op_types)
    notes.append(f"dynamic int8 ({weight} weights) on {', '.join(sorted(present)) or 'no node (no such op type)'}"
                 + ("" if cfg.op_types else "; Conv stays float by default (ConvInteger is slow on CPUs)"))

    def tool(src, dst, _work) -> None:
        ort_quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types, per_channel=bool(cfg.per_channel),
                             reduce_range=cfg.reduce_range, weight_type=ort_type(weight),
                             nodes_to_exclude=sorted(excluded))

    return via_files(work, tool)


def _bad_type(weight: str):
    from onnxopt.errors import ConfigError

    return ConfigError(f"dynamic quantization takes u8 or s8 weights, not {weight}", "use weight_type=u8 or s8")
