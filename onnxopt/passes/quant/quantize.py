"""The ``quantize`` pass and ``use_metric``; the config and its target defaults are in ``config``.

Examples::

    onnxopt optimize m.onnx -o q.onnx --passes quantize --calib calib.npz
    onnxopt optimize m.onnx -o q.onnx --passes "quantize:mode=static,format=qoperator,method=entropy" --calib d.npz
    onnxopt optimize m.onnx -o q.onnx --passes "quantize:target=cosine>=0.999" --calib calib.npz
"""

from __future__ import annotations

import onnx

from onnxopt.errors import ConfigError
from onnxopt.passes.base import Choice, Pass, PassContext, register
from onnxopt.passes.quant.config import QuantizeConfig, Resolved, resolve  # noqa: F401  (re-exported)


@register
class Quantize(Pass):
    """int8/int16 quantization: static (calibrated), dynamic, or weight-only; optional accuracy target."""

    name = "quantize"
    Config = QuantizeConfig
    # the tuner starts from the config default (the first value where it is None); format and types give way to
    # the profile's quant_formats where it lists them
    tunable = {
        "mode": Choice(("static", "dynamic")),
        "latency_aware": Choice((True, False)),
        "format": Choice(("qdq", "qoperator")),
        "per_channel": Choice((True, False)),
        "method": Choice(("minmax", "entropy", "percentile", "mse")),
        "rounding": Choice(("nearest", "gptq")),
        "activation_type": Choice(("u8", "s8")),
        "weight_type": Choice(("s8", "u8")),
        "symmetric_activations": Choice((False, True)),
    }

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        from onnxopt.passes.quant.run import quantize

        return quantize(model, self.config, ctx)  # type: ignore[arg-type]


def use_metric(pipeline, metric: str):
    """``--eval module:function`` / ``optimize(metric=...)``: the user metric for the ``quantize``
    passes of ``pipeline`` (their ``eval`` option), so that ``max_drop`` targets measure it.

    Refused when no quantize pass is there to use it, or one already names another metric."""
    from onnxopt.passes.pipeline import Pipeline
    from onnxopt.targets import load_metric

    load_metric(metric)  # fail now, with the import error, rather than after calibration
    found = [i for i, p in enumerate(pipeline.passes) if isinstance(p, Quantize)]
    if not found:
        raise ConfigError("--eval gives a metric to the quantize pass, and the pipeline has none",
                          "add e.g. quantize:target=max_drop=0.01 to --passes")
    passes = list(pipeline.passes)
    for i in found:
        current = passes[i].config.eval
        if current not in (None, metric):
            raise ConfigError(f"quantize already has eval={current}, and --eval says {metric}", "give one")
        passes[i] = Quantize(config=passes[i].config.model_copy(update={"eval": metric}))
    return Pipeline(passes)
