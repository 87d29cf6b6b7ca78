"""``quantize`` and ``fp16``: thin Pass classes over ``onnxopt.quant`` (imported on first use).

Examples::

    onnxopt optimize m.onnx -o q.onnx --passes quantize --calib calib.npz
    onnxopt optimize m.onnx -o q.onnx --passes "quantize:mode=static,format=qoperator,method=entropy" --calib d.npz
    onnxopt optimize m.onnx -o q.onnx --passes "quantize:target=cosine>=0.999" --calib calib.npz
    onnxopt optimize m.onnx -o h.onnx --passes "fp16:auto=true"
"""

from __future__ import annotations

import onnx

from onnxopt.passes.base import Choice, Pass, PassContext, register
from onnxopt.quant.config import QuantizeConfig
from onnxopt.quant.fp16 import Fp16Config


@register
class Quantize(Pass):
    """int8/int16 quantization: static (calibrated), dynamic, or weight-only; optional accuracy target."""

    name = "quantize"
    Config = QuantizeConfig
    tunable = {
        "format": Choice(("qdq", "qoperator")),
        "per_channel": Choice((True, False)),
        "method": Choice(("minmax", "entropy", "percentile")),
        "activation_type": Choice(("u8", "s8")),
        "weight_type": Choice(("s8", "u8")),
        "symmetric_activations": Choice((False, True)),
    }

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        from onnxopt.quant.run import quantize

        return quantize(model, self.config, ctx)  # type: ignore[arg-type]


@register
class Fp16(Pass):
    """float32 -> float16 (inputs/outputs stay float32), refused if it breaks the outputs."""

    name = "fp16"
    Config = Fp16Config
    tunable = {"auto": Choice((False, True))}

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        from onnxopt.quant.run import fp16

        return fp16(model, self.config, ctx)
