"""One entry point per pass: ``quantize(model, cfg, ctx)`` and ``fp16(model, cfg, ctx)``.

They pick the mode, resolve target defaults, and write what happened into ``ctx`` (notes for
people, details for tools). Every note says when calibration data were synthetic.
"""

from __future__ import annotations

import onnx

from onnxopt.errors import ConfigError
from onnxopt.quant.config import QuantizeConfig, resolve

LATENCY_SAMPLES = 4  # inputs cycled through while timing (a batch-1 model runs one at a time)


def quantize(model: onnx.ModelProto, cfg: QuantizeConfig, ctx) -> onnx.ModelProto:
    notes: list[str] = []
    try:
        if cfg.mode == "dynamic":
            from onnxopt.quant.dynamic import quantize_dynamic

            return quantize_dynamic(model, cfg, notes)
        if cfg.mode == "weight-only":
            from onnxopt.quant.weight_only import weight_only_int4, weight_only_int8

            return (weight_only_int4 if cfg.bits == 4 else weight_only_int8)(model, cfg, notes)
        return _static(model, cfg, ctx, notes)
    finally:
        for note in notes:
            ctx.note(note)


def _static(model: onnx.ModelProto, cfg: QuantizeConfig, ctx, notes: list[str]) -> onnx.ModelProto:
    from onnxopt.quant.static import StaticQuantizer

    if ctx.data is None:
        raise ConfigError("static quantization needs calibration data and none was given",
                          "pass --calib data.npz or an image folder (or --calib synthetic for a smoke test only)")
    settings = resolve(cfg, ctx.profile)
    notes.append(f"format: {settings.reason}")
    quantizer = StaticQuantizer(model, ctx.data, cfg, settings)
    notes.extend(quantizer.notes)
    ctx.details["quantize"] = {"settings": settings.__dict__, "calibration": quantizer.info.__dict__,
                               "quantizable_nodes": len(quantizer.quantizable())}
    if cfg.target and cfg.latency_aware:
        raise ConfigError("target and latency_aware cannot be combined yet",
                          "use one: target=... keeps accuracy, latency_aware=true keeps speed")
    if cfg.target:
        from onnxopt.quant.mixed import keep_accuracy
        from onnxopt.quant.targets import Judge, load_metric, parse_target

        metric = load_metric(cfg.eval) if cfg.eval else None
        judge = Judge(quantizer.model, ctx.data, parse_target(cfg.target), metric)
        result = keep_accuracy(quantizer, judge, ctx.data, notes)
        wide = cfg.fallback == "int16"
        ctx.details["quantize"].update(kept_in_float=[] if wide else result.kept,
                                       kept_16bit=result.kept if wide else [],
                                       scores=result.scores, search=result.trail)
        return result.model
    if cfg.latency_aware:
        return _latency_aware(model, quantizer, ctx, notes)
    return quantizer.quantize()


def _latency_aware(model: onnx.ModelProto, quantizer, ctx, notes: list[str]) -> onnx.ModelProto:
    from onnxopt.model import input_specs
    from onnxopt.quant.calib import dataset_feeds
    from onnxopt.quant.latency import latency_aware

    feeds = list(dataset_feeds(ctx.data, input_specs(quantizer.model), LATENCY_SAMPLES))
    result = latency_aware(quantizer, model, feeds, ctx.profile)
    notes.extend(result.notes)
    ctx.details["quantize"].update(
        latency_aware={"choice": result.choice, "whole_model": result.whole,
                       "nodes": [d.row() for d in result.decisions], "unattributed_us": result.unattributed_us},
        kept_in_float=result.kept_in_float())
    if result.choice == "fp32":
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    return result.model


def fp16(model: onnx.ModelProto, cfg, ctx) -> onnx.ModelProto:
    from onnxopt.quant.fp16 import to_fp16

    notes: list[str] = []
    try:
        return to_fp16(model, cfg, ctx.data, ctx.shapes, notes, ctx.details)
    finally:
        for note in notes:
            ctx.note(note)
