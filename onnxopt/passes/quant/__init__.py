"""Quantization and precision (layer "passes"): make real exports quantizable, calibrate within a
memory budget, and quantize statically, dynamically or weight-only, to fp16, or with an accuracy
target — all through onnxruntime.quantization and onnxconverter-common.

Modules: ``prepare`` (exporter quirks), ``calib`` (bounded calibration), ``static``, ``dynamic``,
``weight_only``, ``fp16`` (the pass and its work), ``mixed`` (accuracy-keeping fallback), ``search`` (bisection),
``quantize`` (the pass, its options and target defaults), ``run`` (what the passes call), ``ortio`` (temp-file bridge).
Heavy imports happen inside functions.
"""

from onnxopt.passes.quant.fp16 import Fp16, Fp16Config
from onnxopt.passes.quant.quantize import Quantize, QuantizeConfig, use_metric

__all__ = ["Fp16", "Fp16Config", "Quantize", "QuantizeConfig", "use_metric"]
