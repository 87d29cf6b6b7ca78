"""Static quantization on the corpus: checker, onnxruntime, accuracy, memory-bounded calibration."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import accuracy

from onnxopt.errors import ConfigError, ModelError, PassError
from onnxopt.evaluate import fidelity
from onnxopt.passes import PassContext, build
from onnxopt.passes.quant import Quantize
from onnxopt.passes.quant.calib import calibrate
from onnxopt.passes.quant.config import QuantizeConfig, resolve
from onnxopt.passes.quant.ortio import workdir, write_model
from onnxopt.passes.quant.static import StaticQuantizer
from onnxopt.zoo import corpus


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def quantize(model, data, **options):
    ctx = PassContext(data=data)
    out = Quantize(**options).apply(model, ctx)
    onnx.checker.check_model(out, full_check=True)
    return out, ctx


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_digits_static_keeps_accuracy_on_held_out_data(digits, fmt):
    model, calib, held_out = digits
    out, ctx = quantize(model, calib, format=fmt)
    assert ("DequantizeLinear" in ops(out)) if fmt == "qdq" else ("QLinearConv" in ops(out))
    before, after = accuracy(model, held_out), accuracy(out, held_out)
    assert after >= before - 0.01, (before, after)
    assert fidelity(model, out, held_out).top1_agreement >= 0.99
    assert any("minmax calibration on 64" in n for n in ctx.notes)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_digits_calibration_methods(digits, method):
    model, calib, held_out = digits
    out, _ = quantize(model, calib, method=method, calib_size=32)
    assert accuracy(out, held_out) >= accuracy(model, held_out) - 0.02


def test_static_without_data_is_a_config_error(digits):
    with pytest.raises(ConfigError, match="calibration data"):
        Quantize().apply(digits[0], PassContext(data=None))
    with pytest.raises(PassError, match="calibration data"):  # through a pipeline it names the pass
        build("quantize").run(digits[0], PassContext(data=None))


def test_synthetic_calibration_says_so_in_every_record(digits):
    from onnxopt.data import load_data

    model = digits[0]
    data = load_data("synthetic:n=8", model)
    _, ctx = quantize(model, data)
    assert sum("SYNTHETIC" in n for n in ctx.notes) >= 2


def test_exclude_by_regex_keeps_those_nodes_float(digits):
    model, calib, _ = digits
    out, ctx = quantize(model, calib, exclude="/fc.*")
    fc = [n for n in out.graph.node if n.name.startswith("/fc")]
    assert fc and all(n.op_type in ("Gemm", "Relu", "Flatten") for n in fc)
    assert any("exclude" in n for n in ctx.notes)


def test_bounded_calibration_gives_the_same_ranges_in_chunks(digits):
    """A tiny memory budget forces one-sample chunks; MinMax ranges must not change."""
    model, calib, _ = digits
    cfg = QuantizeConfig()
    prepared = StaticQuantizer(model, calib.take(8), cfg, resolve(cfg))
    with workdir() as work:
        src = write_model(prepared.model, work / "m.onnx")
        specs = __import__("onnxopt.model", fromlist=["input_specs"]).input_specs(prepared.model)
        whole, info_whole = calibrate(src, calib, specs, workdir=work, method="entropy", samples=8)
        chunked, info = calibrate(src, calib, specs, workdir=work, method="entropy", samples=8, budget=1)
    assert info.chunk < info_whole.chunk and info.chunk >= 1
    assert set(whole.keys()) == set(chunked.keys())


def test_already_quantized_model_is_refused_clearly(digits):
    model, calib, _ = digits
    int8, _ = quantize(model, calib)
    with pytest.raises(ModelError, match="already quantized"):
        Quantize().apply(int8, PassContext(data=calib))


class StandInProfile:
    """Duck-typed like onnxopt.profile's Profile: only what quantize reads."""

    name = "trt-like"

    class accelerates:  # noqa: N801
        quant_formats = ["qdq-s8s8"]
        activation_symmetric = True
        weight_symmetric = True
        per_channel = True


def test_profile_sets_the_defaults_and_user_options_win():
    settings = resolve(QuantizeConfig(), StandInProfile())
    assert (settings.format, settings.activation_type, settings.weight_type) == ("qdq", "s8", "s8")
    assert settings.symmetric_activations and "trt-like" in settings.reason
    assert resolve(QuantizeConfig(activation_type="u8"), StandInProfile()).activation_type == "u8"
    plain = resolve(QuantizeConfig())
    assert (plain.format, plain.activation_type, plain.weight_type) == ("qdq", "u8", "s8")
    assert "no target profile" in plain.reason


def test_ppocr_cls_static(ppocr_cls):
    model, data = ppocr_cls
    out, ctx = quantize(model, data)
    assert any("Constant-node" in n for n in ctx.notes)
    assert any("quant_pre_process ran without symbolic" in n for n in ctx.notes)  # its AssertionError, handled
    assert any("opset 11 -> 13" in n for n in ctx.notes)
    fid = fidelity(model, out, data)
    assert fid.top1_agreement >= 0.9 and fid.cosine_min > 0.8


def test_ppocr_det_static_entropy_within_memory(ppocr_det):
    model, data = ppocr_det
    out, ctx = quantize(model, data, method="entropy", calib_size=4, calib_memory="256M")
    info = ctx.details["quantize"]["calibration"]
    # ~92 MiB of activations per 320x320 page (164 MiB before the affine folds and hardswish rewrite)
    assert info["bytes_per_sample"] > 64 * 2**20
    assert info["chunk"] == max(1, (128 * 2**20) // info["bytes_per_sample"]) < info["samples"]
    assert np.isfinite(fidelity(model, out, data).cosine_min)


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet"])
def test_light_zoo_opset9_per_channel_qdq(name):
    from onnxopt.data import load_data

    model = corpus()[name]()
    data = load_data("synthetic:n=4", model)
    out, ctx = quantize(model, data, calib_size=4)
    assert any("opset 9 -> 13" in n for n in ctx.notes)
    axes = [a.i for n in out.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes, "per-channel weights carry a DequantizeLinear axis"
    fid = fidelity(model, out, data)  # random weights, random inputs: a loose but real bound
    assert min(o.cosine_mean for o in fid.outputs) > 0.75 and fid.cosine_min > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_resnet50", "light_densenet121", "light_inception_v1", "light_inception_v2",
                                  "light_vgg19", "light_bvlc_alexnet", "light_zfnet512"])
def test_light_zoo_static_all(name):
    from onnxopt.data import load_data

    model = corpus()[name]()
    data = load_data("synthetic:n=2", model)
    out, _ = quantize(model, data, calib_size=2)
    assert min(o.cosine_mean for o in fidelity(model, out, data).outputs) > 0.8
