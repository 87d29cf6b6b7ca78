"""Weight-only quantization: weights stored in 8 or 4 bits, activations stay float (for size).

- ``bits=8``: every constant weight of Conv / ConvTranspose / Gemm / MatMul becomes an int8
  per-channel initializer with a ``DequantizeLinear`` in front. Scales and zero points come from
  onnxruntime's own ``compute_data_quant_params`` / ``quantize_onnx_initializer``.
- ``bits=4``: block-wise int4 ``MatMulNBits`` through onnxruntime's ``MatMulNBitsQuantizer``
  (RTN or HQQ; ``algorithm=gptq`` takes RTN's blocks and re-chooses the codes by :mod:`.gptq`,
  which needs ``--calib``). It only handles MatMul, so Gemm with a constant weight is first
  rewritten as MatMul + Add (the classifier heads of CNNs are Gemms). onnxruntime's own GPTQ is
  not used: it imports torch for every calibration array; with that worked around, its symmetric
  mode scored below RTN on the digits model and its asymmetric mode failed on the 10-output head
  ("cannot reshape array of size 5 into shape (10,newaxis)").
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.errors import ConfigError
from onnxopt.passes.quant.config import QuantizeConfig
from onnxopt.passes.quant.ortio import quiet
from onnxopt.passes.quant.prepare import prepare
from onnxopt.passes.quant.static import match_nodes

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _channel_axis(node: onnx.NodeProto, rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return rank - 1  # MatMul B [.., K, N]: one scale per output column


def _quantize_tensor(weight: np.ndarray, axis: int, symmetric: bool):
    """(int8 initializer values, scales, zero points) per slice along ``axis``, by onnxruntime."""
    from onnxruntime.quantization.quant_utils import compute_data_quant_params

    moved = np.moveaxis(weight, axis, 0)
    params = [compute_data_quant_params(c.reshape(-1), onnx.TensorProto.INT8, symmetric) for c in moved]
    zero = np.array([p[0] for p in params]).reshape(-1).astype(np.int8)
    scale = np.array([p[1] for p in params]).reshape(-1).astype(np.float32)
    return zero, scale


def weight_only_int8(model: onnx.ModelProto, cfg: QuantizeConfig, notes: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization.quant_utils import quantize_onnx_initializer

    prepared = prepare(model, run_pre_process=False, what="weight-only quantization")
    notes.extend(prepared.notes)
    work = prepared.model
    excluded, _ = match_nodes(work, cfg.exclude)
    op_types = set(cfg.op_types) or set(WEIGHT_INPUT)
    inits = {t.name: t for t in work.graph.initializer}
    readers: dict[str, int] = {}
    for node in work.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    done: dict[str, str] = {}
    new_nodes, count = [], 0
    for node in work.graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        name = node.input[index] if index is not None and len(node.input) > index else None
        tensor = inits.get(name) if name else None
        if (tensor is None or node.op_type not in op_types or node.name in excluded
                or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) < 2):
            new_nodes.append(node)
            continue
        if name not in done:
            weight = numpy_helper.to_array(tensor)
            axis = _channel_axis(node, weight.ndim)
            zero, scale = _quantize_tensor(weight, axis, cfg.symmetric_weights is not False)
            q = quantize_onnx_initializer(tensor, onnx.TensorProto.INT8, zero, scale, axis=axis,
                                          quant_weight_name=f"{name}_int8")
            work.graph.initializer.extend([q, numpy_helper.from_array(scale, f"{name}_scale"),
                                           numpy_helper.from_array(zero, f"{name}_zero_point")])
            new_nodes.append(helper.make_node("DequantizeLinear", [q.name, f"{name}_scale", f"{name}_zero_point"],
                                              [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=axis))
            done[name] = f"{name}_dequantized"
            count += 1
        node.input[index] = done[name]
        new_nodes.append(node)
    if not count:
        raise ConfigError("weight-only int8 found no constant float weight to quantize",
                          f"op types searched: {', '.join(sorted(op_types))}")
    kept = [t for t in work.graph.initializer if t.name not in done]
    del work.graph.initializer[:]
    work.graph.initializer.extend(kept)
    del work.graph.node[:]
    work.graph.node.extend(new_nodes)
    notes.append(f"stored {count} weight tensor(s) as int8 per-channel with DequantizeLinear; activations stay float")
    return work


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, B const, C)`` with alpha=1, transA=0 as ``MatMul(A, B') + Add(beta*C)``, in place."""
    inits = {t.name: t for t in model.graph.initializer}
    out, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0):
            out.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        b_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), b_name))
        stem = node.name or node.output[0]
        name = node.name or f"{stem}_MatMul"  # the Gemm's name, so exclude= patterns still match
        if len(node.input) > 2 and node.input[2]:
            mid = f"{stem}_matmul_out"
            out.append(helper.make_node("MatMul", [node.input[0], b_name], [mid], name=name))
            bias = node.input[2]
            beta = attrs.get("beta", 1.0)
            if beta != 1.0 and bias in inits:
                scaled = numpy_helper.to_array(inits[bias]) * beta
                bias = f"{bias}_beta"
                model.graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), bias))
            out.append(helper.make_node("Add", [mid, bias], [node.output[0]], name=f"{stem}_Add"))
        else:
            out.append(helper.make_node("MatMul", [node.input[0], b_name], [node.output[0]], name=name))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(out)
    return rewritten


def weight_only_int4(model: onnx.ModelProto, cfg: QuantizeConfig, notes: list[str], data=None) -> onnx.ModelProto:
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    prepared = prepare(model, run_pre_process=False, what="weight-only quantization")
    notes.extend(prepared.notes)
    work = prepared.model
    rewritten = gemm_to_matmul(work)
    if rewritten:
        notes.append(f"rewrote {rewritten} Gemm node(s) as MatMul + Add (MatMulNBits takes MatMul only)")
    excluded, _ = match_nodes(work, cfg.exclude)
    symmetric = cfg.symmetric_weights is not False
    algo = {"rtn": lambda: nbits.RTNWeightOnlyQuantConfig(),
            "hqq": lambda: _hqq_config(nbits, cfg),
            "gptq": lambda: nbits.RTNWeightOnlyQuantConfig()}[cfg.algorithm]()  # then GPTQ codes on its grid
    rounder = _gptq_rounder(work, cfg, data, excluded, notes) if cfg.algorithm == "gptq" else None
    with quiet():
        quantizer = nbits.MatMulNBitsQuantizer(work, bits=4, block_size=cfg.block_size, is_symmetric=symmetric,
                                               nodes_to_exclude=sorted(excluded), algo_config=algo)
        quantizer.process()
    result = quantizer.model.model
    if rounder is not None:
        notes.append(rounder.refine_nbits(result).describe())
    count = sum(1 for n in result.graph.node if n.op_type == "MatMulNBits")
    if not count:
        raise ConfigError("weight-only int4 found no MatMul with a constant weight to quantize",
                          "int4 suits MatMul/Gemm-heavy models; use bits=8 for conv nets")
    if not any(o.domain == "com.microsoft" for o in result.opset_import):  # MatMulNBits is a contrib op
        result.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    notes.append(f"int4 block-wise ({cfg.algorithm}, block {cfg.block_size}) on {count} MatMul node(s)")
    return result


def _hqq_config(nbits, cfg: QuantizeConfig):
    import importlib.util

    if importlib.util.find_spec("torch") is None:  # onnxruntime's HQQ is written in torch
        raise ConfigError("algorithm=hqq needs PyTorch, which onnxopt does not install",
                          "pip install torch, or use algorithm=gptq (with --calib) or rtn")
    return nbits.HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=4)


def _gptq_rounder(model: onnx.ModelProto, cfg: QuantizeConfig, data, excluded: set[str], notes: list[str]):
    """A GPTQ rounder for the MatMuls, over a copy of the float model (the quantizer edits it)."""
    from onnxopt.model import parse_size
    from onnxopt.passes.quant.calib import memory_budget
    from onnxopt.passes.quant.gptq import Rounder

    if data is None:
        raise ConfigError("algorithm=gptq needs calibration data (it fits the rounding to the layer inputs)",
                          "pass --calib data.npz or an image folder, or use algorithm=rtn")
    if getattr(data, "synthetic", False):
        notes.append("WARNING: GPTQ fitted to SYNTHETIC random inputs")
    original = onnx.ModelProto()
    original.CopyFrom(model)
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in excluded]
    budget = memory_budget(parse_size(cfg.calib_memory) if cfg.calib_memory else None)
    return Rounder(original, data, samples=cfg.calib_size, budget=budget, names=names)
