"""16-bit "wide" quantization for the sensitive nodes of an otherwise 8-bit QDQ model.

Keeping a node in float is not the only fallback. Where a model's 8-bit error is in its
activations (PP-OCRv4 det: widening the activations helps far more than widening the weights,
docs/benchmarks.md), and near-lossless targets make nearest-rounded 8-bit weights matter too, a
sensitive node can be made "wide" instead of float: its output activations become u16, and its weights s16
(``fallback=int16``) or left 8-bit (``fallback=a16w8``), through onnxruntime's per-tensor
``TensorQuantOverrides``. onnxruntime's ``MixedPrecisionTensorQuantOverridesFixer`` then adds the
u8 <-> u16 conversions at the region's edges, so no type mismatch reaches the model.

Example::

    overrides = wide_overrides(quantizer.model, {"Conv_3", "Conv_7"}, "u8")
    model = quantizer.quantize(overrides=overrides)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

WIDE_ACTIVATION = "u16"
WIDE_WEIGHT = "s16"
WEIGHTED = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,)}


def wide_overrides(model: onnx.ModelProto, nodes: Iterable[str], activation_type: str, ranges=None, *,
                   weights: bool = True) -> dict:
    """onnxruntime ``TensorQuantOverrides`` that make ``nodes`` 16-bit in a model whose default
    activation type is ``activation_type``; empty when ``nodes`` is empty. ``ranges`` (calibration
    ``TensorsData``), when given, set the 16-bit tensors' ranges (``rmin``/``rmax``): the 8-bit
    ranges may be percentile-clipped, and 16 bits can afford the full range. ``weights=False``
    widens the activations only (W8A16)."""
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer,
    )
    from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

    from onnxopt.passes.quant.config import ort_type

    chosen = set(nodes)
    if not chosen:
        return {}
    inits = {t.name for t in model.graph.initializer}
    wide_act, wide_weight = ort_type(WIDE_ACTIVATION), ort_type(WIDE_WEIGHT)
    initial: dict[str, list[dict]] = {}
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        for output in node.output:
            if output:
                initial[output] = [{"quant_type": wide_act}]
        for index in WEIGHTED.get(node.op_type, ()) if weights else ():
            if len(node.input) > index and node.input[index] in inits:
                initial[node.input[index]] = [{"quant_type": wide_weight}]
    helper = TensorQuantOverridesHelper(initial)
    default = ort_type(activation_type)
    fixer = MixedPrecisionTensorQuantOverridesFixer.create_from_model(helper, model, default)
    fixer.apply(default, False)
    found = helper.get_dict()
    if ranges is not None:
        _full_ranges(found, ranges, inits, default)
    return found


def _full_ranges(overrides: dict, ranges, inits: set[str], default) -> None:
    """Give every 16-bit activation (not converted, not a weight) its range from ``ranges``."""
    for tensor, entries in overrides.items():
        entry = entries[0]
        if tensor in inits or tensor not in ranges or "convert" in entry or entry.get("quant_type") == default:
            continue
        lo, hi = (np.asarray(v, np.float32).reshape(-1)[0] for v in ranges[tensor].range_value)
        entry["rmin"], entry["rmax"] = np.array(lo, np.float32), np.array(hi, np.float32)
