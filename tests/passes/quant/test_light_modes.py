"""Every mode on the small light-zoo models (slow): a model that passes the full checker and runs in
onnxruntime with outputs close to float, or a clear refusal (ConfigError/PassError) and nothing else."""

from __future__ import annotations

import onnx
import pytest

from onnxopt.data import load_data
from onnxopt.errors import ConfigError
from onnxopt.evaluate import fidelity
from onnxopt.passes import PassContext
from onnxopt.passes.quant import Fp16, Quantize
from onnxopt.zoo import corpus

LIGHT = ["light_squeezenet", "light_shufflenet", "light_resnet50", "light_inception_v1"]
MODES = {
    "dynamic": {"mode": "dynamic"},
    "dynamic-conv": {"mode": "dynamic", "op_types": "Conv|MatMul|Gemm"},
    "weight-only-int8": {"mode": "weight-only"},
    "weight-only-int4": {"mode": "weight-only", "bits": 4, "block_size": 32},
}


def _light(name: str):
    model = corpus()[name]()
    return model, load_data("synthetic:n=2,seed=1", model)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", LIGHT)
def test_light_zoo_mode_runs_or_refuses(name, mode):
    model, data = _light(name)
    has_gemm = any(n.op_type in ("Gemm", "MatMul") for n in model.graph.node)
    try:
        out = Quantize(**MODES[mode]).apply(model, PassContext())
    except ConfigError as exc:  # int4 on a conv-only net: refused, with the reason
        assert mode == "weight-only-int4" and not has_gemm, exc
        assert "MatMul" in str(exc)
        return
    onnx.checker.check_model(out, full_check=True)
    fid = fidelity(model, out, data)  # random weights: loose bounds, but a broken model fails them
    assert min(o.cosine_mean for o in fid.outputs) > 0.8, (name, mode, fid.cosine_min)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_light_zoo_fp16_keeps_fidelity_or_refuses(name):
    model, data = _light(name)
    ctx = PassContext(data=data)
    out = Fp16().apply(model, ctx)  # refusing would raise PassError and fail here: these convert cleanly
    onnx.checker.check_model(out, full_check=True)
    assert ctx.details["fp16_scores"]["cosine"] >= 0.99
    assert fidelity(model, out, data).cosine_min >= 0.99
