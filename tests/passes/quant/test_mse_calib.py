"""MSE-optimal activation ranges (``method=mse``): thresholds on known histograms, a real model
quantized with them, and the mixed-precision search trying them."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest

from onnxopt.evaluate import fidelity
from onnxopt.model import input_specs
from onnxopt.passes import PassContext
from onnxopt.passes.quant import Quantize
from onnxopt.passes.quant.calib import activation_levels, calibrate, mse_threshold
from onnxopt.passes.quant.config import QuantizeConfig, resolve
from onnxopt.passes.quant.ortio import workdir, write_model
from onnxopt.passes.quant.static import StaticQuantizer


def _threshold(values: np.ndarray, symmetric: bool, levels: int = 255) -> tuple[float, float]:
    """mse_threshold on the histogram onnxruntime's percentile collector builds, fed in 3 rounds
    as calibration chunks would (so merged histograms are covered too)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("percentile", symmetric, 2048, 128, 99.999, None)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints on every call
        for chunk in np.array_split(values.astype(np.float32), 3):
            collector.collect({"t": [chunk]})
    hist, edges, lowest, highest, *_ = collector.histogram_dict["t"]
    return mse_threshold(hist, edges, lowest, highest, symmetric=symmetric, levels=levels)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_threshold_clips_rare_outliers_and_keeps_a_uniform_range(symmetric):
    rng = np.random.default_rng(0)
    bulk = rng.standard_normal(1_000_000)
    low, high = _threshold(np.concatenate([bulk, [100.0, -100.0]]), symmetric)
    # expected error 2(100-t)^2 + 1e6 (2t/255)^2/12 is least at t = 400/(4 + 2e6*4/(12*255^2)) = 28.07
    assert high == pytest.approx(28.07, abs=0.5) and low == pytest.approx(-high)
    assert high < 0.3 * 100.0  # far below the max the outliers set
    low, high = _threshold(rng.uniform(0.0, 1.0, 1_000_000), symmetric)
    assert high >= 0.99 and 0.0 <= low < 1e-3  # nothing to clip: keeps ~max, and the real min


def test_mse_threshold_sizes_the_step_for_the_grid_the_tensor_gets():
    """A Relu output on u8: the asymmetric grid spends all 255 steps on [0, t], the symmetric one
    half of them on negatives that never come, so its step is twice as coarse and clipping pays
    sooner; a 16-bit grid makes rounding so cheap that clipping the Gaussian tail never pays."""
    relu = np.maximum(np.random.default_rng(1).standard_normal(1_000_000), 0.0)
    asymmetric, symmetric = _threshold(relu, False)[1], _threshold(relu, True)[1]
    assert 3.0 < symmetric < asymmetric < relu.max(), (symmetric, asymmetric)
    assert _threshold(relu, False, levels=65535)[1] >= 0.99 * relu.max()
    assert activation_levels("u8", False) == 255 and activation_levels("s8", True) == 254


def test_mse_ranges_clip_inside_the_minmax_ranges(digits):
    model, calib, _ = digits
    cfg = QuantizeConfig(calib_size=16)
    q = StaticQuantizer(model, calib, cfg, resolve(cfg))
    with workdir() as work:
        found, info = calibrate(write_model(q.model, work / "f.onnx"), calib, input_specs(q.model), workdir=work,
                                method="mse", op_types=q.op_types, samples=16, levels=255)
    assert info.method == "mse" and set(found) == set(q.ranges)
    for name, minmax in q.ranges.items():
        low, high = found[name].range_value
        assert minmax.lowest <= low <= high <= minmax.highest, name  # a clipping of the real range


def test_method_mse_quantizes_digits(digits):
    model, calib, held_out = digits
    ctx = PassContext(data=calib)
    out = Quantize(method="mse", calib_size=32).apply(model, ctx)
    onnx.checker.check_model(out, full_check=True)
    assert "DequantizeLinear" in {n.op_type for n in out.graph.node}
    assert fidelity(model, out, held_out).top1_agreement >= 0.99
    assert any(n.startswith("mse calibration on 32") for n in ctx.notes), ctx.notes
