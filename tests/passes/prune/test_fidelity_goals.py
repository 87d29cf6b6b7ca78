"""The issue's fidelity goals on real data: digits accuracy with MACs halved, PP-OCR det on text pages.

Calibration and scoring never share samples: digits calibrates on the first 150 evaluation samples
and scores the other 300; det calibrates on pages drawn with seed 0 and scores pages with seed 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import Dataset
from onnxopt.evaluate import fidelity
from onnxopt.passes.prune.prune import PruneConfig, prune_model
from onnxopt.stats import model_stats
from tests.conftest import CORPUS_SHAPES, DIGITS_EVAL, load_corpus
from tests.corpus_data import det_inputs

# the best setting found for "MACs halved, accuracy within 1 point" (see README, Pruning): measured
# MACs -68.2%, held-out accuracy 99.33% (fp32 99.67%); without round_to -56.7% and 99.0%; uniform
# at -50%: 98.67%, global 97.67%
DIGITS_BEST = PruneConfig(target_macs=0.5, strategy="sensitivity", round_to=8, recover="lstsq", calib_size=150)


def _digits_splits() -> tuple[Dataset, Dataset]:
    arrays = np.load(DIGITS_EVAL)
    x, y = arrays["input"].astype(np.float32), arrays["labels"]
    return Dataset({"input": x[:150]}, y[:150], "digits calib split"), Dataset({"input": x[150:]}, y[150:], "held out")


def test_digits_macs_halved_accuracy_within_one_point():
    model = load_corpus("digits")
    calib, held_out = _digits_splits()
    pruned, report = prune_model(model, DIGITS_BEST, None, calib)
    drop = 1 - model_stats(pruned).macs_known / model_stats(model).macs_known
    assert drop >= 0.5, drop
    result = fidelity(model, pruned, held_out)
    assert result.accuracy_candidate >= result.accuracy_reference - 0.01 - 1e-9, result
    assert report["recovery"]["cosine_with"] > report["recovery"]["cosine_without"]


@pytest.mark.slow
def test_recovery_improves_ppocr_det_on_text_pages():
    model = load_corpus("ppocr_det")
    shapes = CORPUS_SHAPES["ppocr_det"]
    calib = Dataset({"x": det_inputs(8, seed=0)}, None, "text pages, seed 0")
    held_out = Dataset({"x": det_inputs(4, seed=1)}, None, "text pages, seed 1")
    plain, _ = prune_model(model, PruneConfig(ratio=0.3, recover="none", round_to=1), shapes, calib)
    fitted, report = prune_model(model, PruneConfig(ratio=0.3, recover="lstsq", round_to=1), shapes, calib)
    assert report["recovery"]["layers"] >= 40
    # the head's 2x2/2 upsamplers are among the re-fitted layers (kernel = stride ConvTranspose)
    assert any(n.op_type == "ConvTranspose" and n.input[1].endswith("_refit") for n in fitted.graph.node)
    cos_plain = fidelity(model, plain, held_out).outputs[0].cosine_mean
    cos_fit = fidelity(model, fitted, held_out).outputs[0].cosine_mean
    # measured: 0.03 -> 0.56 (criterion auto = variance; uniform 0.3 cuts every group, and does not
    # reach the 0.9: see the sensitivity strategy below and README, Pruning)
    assert cos_fit > cos_plain + 0.2, (cos_plain, cos_fit)


@pytest.mark.slow
def test_ppocr_det_ratio_0_3_by_sensitivity_keeps_cosine_with_backbone_cut():
    """The issue's det goal: ratio 0.3 with the backbone included, output cosine >= 0.9 on text pages.

    ``strategy=sensitivity`` removes 30% of the prunable channels where each group's measured curve
    (pruned alone, mean shift moved, consumers re-fitted) says it costs least. On rendered text
    pages uniform 0.3 (every group cut by 30%) holds too, and sensitivity beats it. (On the random
    glyph-block pages used before, uniform scored 0.556 and sensitivity 0.941.)"""
    model = load_corpus("ppocr_det")
    shapes = CORPUS_SHAPES["ppocr_det"]
    calib = Dataset({"x": det_inputs(8, seed=0)}, None, "text pages, seed 0")
    held_out = Dataset({"x": det_inputs(8, seed=1)}, None, "text pages, seed 1")
    by_curves = PruneConfig(ratio=0.3, strategy="sensitivity", round_to=1)
    pruned, report = prune_model(model, by_curves, shapes, calib)
    prunable = [g for g in report["groups"] if g["prunable"]]
    removed = 1 - sum(g["kept"] for g in prunable) / sum(g["channels"] for g in prunable)
    cosine = fidelity(model, pruned, held_out).outputs[0].cosine_mean
    uniform, _ = prune_model(model, PruneConfig(ratio=0.3, round_to=1), shapes, calib)
    cosine_uniform = fidelity(model, uniform, held_out).outputs[0].cosine_mean
    # measured: held-out cosine 0.9957, uniform 0.3: 0.9678
    assert removed >= 0.29, removed
    assert cosine >= 0.9 and cosine_uniform >= 0.9, (cosine, cosine_uniform)
    assert cosine > cosine_uniform, (cosine, cosine_uniform)
    # the backbone (PP-LCNetV3: p2o.Conv.0-32) is cut, not only the neck and head
    backbone = [a for a in report["allocation"] if a["ratio"] > 0 and int(a["producers"][0].split(".")[-1]) <= 32
                and "Transpose" not in a["producers"][0]]
    assert len(backbone) >= 4, backbone
