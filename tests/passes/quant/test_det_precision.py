"""PP-OCRv4 det (1x3x320x320): where static int8's error comes from, what 16-bit fixes, the
text-mask IoU metric, and fp16 refusing rather than silently breaking it. Calibrated on rendered
text pages of seed 0, scored on pages of seed 1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.data import Dataset
from onnxopt.errors import ConfigError
from onnxopt.evaluate import run
from onnxopt.passes import PassContext
from onnxopt.passes.quant import Fp16, Quantize
from onnxopt.targets import mask_iou, parse_target
from tests.corpus_data import det_inputs


def test_mask_iou_and_iou_target():
    ref = np.zeros((2, 1, 4, 4), np.float32)
    ref[0, 0, :2] = 0.9  # 8 pixels of "text" in sample 0, none in sample 1
    cand = ref.copy()
    cand[0, 0, 0] = 0.1  # 4 of them lost
    assert mask_iou(ref, cand) == pytest.approx((0.5 + 1.0) / 2)  # an empty/empty sample agrees
    assert mask_iou(ref, ref) == 1.0
    (criterion,) = parse_target("iou>=0.9")
    assert criterion.kind == "iou" and criterion.holds(0.95) and not criterion.holds(0.5)
    with pytest.raises(ConfigError, match="bad target"):
        parse_target("dice>=0.9")


def test_int16_fallback_needs_qdq(digits):
    model, calib, _ = digits
    with pytest.raises(ConfigError, match="format=qdq"):
        Quantize(target="cosine>=0.99999", fallback="int16", format="qoperator").apply(model, PassContext(data=calib))


@pytest.fixture(scope="module")
def det_split(ppocr_det):
    model, _ = ppocr_det
    return model, Dataset({"x": det_inputs(8, seed=0)}, None, "calib"), Dataset({"x": det_inputs(4, seed=1)}, None, "")


def _scores(model, candidate, data) -> tuple[float, float]:
    ref, out = (next(iter(run(m, data).values())) for m in (model, candidate))
    r, c = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    cosine = float(np.mean((r * c).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(c, axis=1)))
    return cosine, mask_iou(ref, out)


@pytest.mark.slow
def test_det_int8_keeps_the_map_and_its_error_is_in_weights_and_activations(det_split):
    """On rendered text pages all-int8 det keeps its text map, better with the affine folds and the
    hardswish rewrite than without; u16 activations with s8 weights still miss cosine 0.999, so the
    weights alone spend the whole budget of that target; u16/s16 everywhere restores it.
    Measured: folded 0.981 (IoU 0.947), unfolded 0.970, u16/s8 0.9987, u16/s16 0.9999."""
    model, calib, score = det_split
    int8 = Quantize(calib_size=8).apply(model, PassContext(data=calib))
    unfolded = Quantize(calib_size=8, fold=False).apply(model, PassContext(data=calib))
    u16 = Quantize(calib_size=8, activation_type="u16").apply(model, PassContext(data=calib))
    wide = Quantize(calib_size=8, activation_type="u16", weight_type="s16").apply(model, PassContext(data=calib))
    (c8, iou8), (c_unfolded, _) = _scores(model, int8, score), _scores(model, unfolded, score)
    assert c8 >= 0.97 and iou8 >= 0.93 and c8 > c_unfolded + 0.005, (c8, iou8, c_unfolded)
    c16, cw = _scores(model, u16, score)[0], _scores(model, wide, score)[0]
    assert c8 < c16 < 0.999 < cw, (c8, c16, cw)
    assert _scores(model, wide, score)[1] >= 0.98


@pytest.mark.slow
def test_det_gptq_rounding_brings_s8_weights_within_the_budget(det_split):
    """With 16-bit activations, nearest-rounded s8 weights leave det at 0.9987; GPTQ's codes on
    the same grid reach 0.999 on unseen pages (measured 0.9997). All-int8 is not helped: there the
    8-bit activations carry the error (0.981 either way)."""
    model, calib, score = det_split
    nearest = Quantize(calib_size=8, activation_type="u16").apply(model, PassContext(data=calib))
    ctx = PassContext(data=calib)
    rounded = Quantize(calib_size=8, activation_type="u16", rounding="gptq").apply(model, ctx)
    onnx.checker.check_model(rounded)
    note = next(n for n in ctx.notes if n.startswith("GPTQ rounding on"))
    assert float(note.split("error ")[1].split("x")[0]) > 3  # measured 10.7x
    c_nearest, c_gptq = _scores(model, nearest, score)[0], _scores(model, rounded, score)[0]
    assert c_nearest < 0.999 <= c_gptq, (c_nearest, c_gptq)


@pytest.mark.slow
def test_det_mixed_int16_meets_its_target_on_unseen_pages(det_split):
    model, calib, score = det_split
    ctx = PassContext(data=calib)
    out = Quantize(target="cosine>=0.999", fallback="int16", calib_size=8).apply(model, ctx)
    onnx.checker.check_model(out)
    details = ctx.details["quantize"]
    assert details["scores"]["cosine"] >= 0.999 and details["kept_in_float"] == []
    assert any("at 16-bit" in n for n in ctx.notes)
    cosine, iou = _scores(model, out, score)
    assert cosine >= 0.995 and iou >= 0.95, (cosine, iou)


@pytest.mark.slow
def test_det_fp16_keeps_the_text_map(det_split):
    """Olive's fp16 gave det a mask IoU of 0.28; ours kept cosine 0.36 until the out-of-range BN
    variance (9.79e7) got its fp32 value back (onnxconverter-common casts every initializer)."""
    model, calib, score = det_split
    ctx = PassContext(data=calib)
    out = Fp16().apply(model, ctx)
    onnx.checker.check_model(out)
    assert any("65504" in n for n in ctx.notes) and ctx.details["fp16_scores"]["cosine"] >= 0.99
    cosine, iou = _scores(model, out, score)
    assert cosine >= 0.999 and iou >= 0.98, (cosine, iou)
