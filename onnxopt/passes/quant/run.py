"""The entry point of the ``quantize`` pass: ``quantize(model, cfg, ctx)``.

They pick the mode, resolve target defaults, and write what happened into ``ctx`` (notes for
people, details for tools). Every note says when calibration data were synthetic.
"""

from __future__ import annotations

import onnx

from onnxopt.errors import ConfigError
from onnxopt.passes.quant.config import QuantizeConfig, resolve

FLOOR = 0.99  # latency-aware without a target: the least output cosine a returned variant may have
LATENCY_SAMPLES = 4  # inputs cycled through while timing (a batch-1 model runs one at a time)


def quantize(model: onnx.ModelProto, cfg: QuantizeConfig, ctx) -> onnx.ModelProto:
    notes: list[str] = []
    try:
        if cfg.mode == "dynamic":
            from onnxopt.passes.quant.dynamic import quantize_dynamic

            return quantize_dynamic(model, cfg, notes)
        if cfg.mode == "weight-only":
            from onnxopt.passes.quant.weight_only import weight_only_int4, weight_only_int8

            if cfg.bits == 4:
                return weight_only_int4(model, cfg, notes, ctx.data)
            return weight_only_int8(model, cfg, notes)
        return _static(model, cfg, ctx, notes)
    finally:
        for note in notes:
            ctx.note(note)


def _static(model: onnx.ModelProto, cfg: QuantizeConfig, ctx, notes: list[str]) -> onnx.ModelProto:
    from onnxopt.passes.quant.static import StaticQuantizer

    if ctx.data is None:
        raise ConfigError("static quantization needs calibration data and none was given",
                          "pass --calib data.npz or an image folder (or --calib synthetic for a smoke test only)")
    if cfg.latency_aware:  # before calibration, which is the slow part
        ctx.need_measurer("quantize latency_aware=true")
    settings = resolve(cfg, ctx.profile)
    notes.append(f"format: {settings.reason}")
    quantizer = StaticQuantizer(model, ctx.data, cfg, settings)
    notes.extend(quantizer.notes)
    if cfg.rounding == "gptq" and settings.format != "qdq":
        notes.append("rounding=gptq applies to QDQ weights; format=qoperator keeps nearest rounding")
    result = _static_search(model, quantizer, cfg, ctx, notes)
    if cfg.rounding == "gptq" and settings.format == "qdq":
        notes.append(quantizer.gptq_report(result).describe())
    return result


def _static_search(model: onnx.ModelProto, quantizer, cfg: QuantizeConfig, ctx, notes: list[str]) -> onnx.ModelProto:
    ctx.details["quantize"] = {"settings": quantizer.settings.__dict__, "calibration": quantizer.info.__dict__,
                               "quantizable_nodes": len(quantizer.quantizable())}
    if cfg.latency_aware:
        return _latency_aware(model, quantizer, ctx, notes)
    if cfg.target:
        from onnxopt.passes.quant.mixed import keep_accuracy
        from onnxopt.targets import Judge, load_metric, parse_target

        metric = load_metric(cfg.eval) if cfg.eval else None
        judge = Judge(quantizer.model, ctx.data, parse_target(cfg.target), metric)
        result = keep_accuracy(quantizer, judge, ctx.data, notes)
        wide = cfg.fallback != "float"
        ctx.details["quantize"].update(kept_in_float=[] if wide else result.kept,
                                       kept_16bit=result.kept if wide else [],
                                       scores=result.scores, search=result.trail,
                                       calibration_search=result.calibration)
        return result.model
    return quantizer.quantize()


def _latency_aware(model: onnx.ModelProto, quantizer, ctx, notes: list[str]) -> onnx.ModelProto:
    from onnxopt.model import input_specs
    from onnxopt.passes.quant.calib import dataset_feeds
    from onnxopt.passes.quant.latency import latency_aware

    measurer = ctx.need_measurer("quantize latency_aware=true")
    feeds = list(dataset_feeds(ctx.data, input_specs(quantizer.model), LATENCY_SAMPLES))
    judge, extra = _fidelity_bar(quantizer, ctx, notes)
    result = latency_aware(quantizer, model, feeds, measurer, judge=judge, extra=extra)
    notes.extend(result.notes)
    ctx.details["quantize"].update(
        latency_aware={"choice": result.choice, "whole_model": result.whole, "scores": result.scores,
                       "nodes": [d.row() for d in result.decisions], "unattributed_us": result.unattributed_us},
        kept_in_float=result.kept_in_float())
    if result.choice == "fp32":
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    return result.model


def _fidelity_bar(quantizer, ctx, notes: list[str]):
    """The judge for latency-aware candidates, on held-out samples (those past ``calib_size``, else the
    last quarter): the user's target, or a cosine floor (:data:`FLOOR`) so a broken int8 model (the
    light SqueezeNet's random weights: 0.81) never wins on speed alone. With a target, the accuracy
    search's model joins the race."""
    from onnxopt.errors import PassError
    from onnxopt.passes.quant.latency import Variant
    from onnxopt.passes.quant.mixed import keep_accuracy
    from onnxopt.targets import Criterion, Judge, load_metric, parse_target

    cfg, data = quantizer.cfg, ctx.data
    held = len(data) - cfg.calib_size if len(data) > cfg.calib_size else max(1, len(data) // 4)
    if len(data) <= cfg.calib_size:
        notes.append(f"latency-aware: fidelity scored on the last {held} calibration sample(s): no held-out "
                     f"data (give more than calib_size={cfg.calib_size} samples)")
    criteria = parse_target(cfg.target) if cfg.target else [Criterion("cosine", FLOOR)]
    metric = load_metric(cfg.eval) if cfg.eval else None
    judge = Judge(quantizer.model, data.tail(held), criteria, metric)
    if not cfg.target:
        return judge, {}
    try:
        found = keep_accuracy(quantizer, Judge(quantizer.model, data, criteria, metric), data, notes)
    except PassError as exc:
        notes.append(f"latency-aware: no mixed-precision candidate: {exc}")
        return judge, {}
    keep = frozenset() if cfg.fallback != "float" else frozenset(found.kept)
    return judge, {"mixed": Variant(found.model, keep)}
