"""Quantization and precision (layer "passes"): make real exports quantizable, calibrate within a
memory budget, and quantize statically, dynamically or weight-only, to fp16, or with an accuracy
target — all through onnxruntime.quantization and onnxconverter-common.

Modules: ``prepare`` (exporter quirks), ``calib`` (bounded calibration), ``static``, ``dynamic``,
``weight_only``, ``fp16``, ``mixed`` (accuracy-keeping fallback), ``search`` (bisection),
``targets`` (targets and user metrics),
``config`` (options and target defaults), ``run`` (what the passes call), ``ortio`` (temp-file bridge).
Heavy imports happen inside functions.
"""
