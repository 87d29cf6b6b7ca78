"""The issue's fidelity goals on real data: digits accuracy with MACs halved, PP-OCR det on text pages.

Calibration and scoring never share samples: digits calibrates on the first 150 evaluation samples
and scores the other 300; det calibrates on pages drawn with seed 0 and scores pages with seed 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import Dataset
from onnxopt.evaluate import fidelity
from onnxopt.prune.pruner import PruneOptions, prune_model
from onnxopt.stats import model_stats
from tests.conftest import CORPUS_SHAPES, DIGITS_EVAL, load_corpus
from tests.corpus_data import det_inputs

# the best setting found for "MACs halved, accuracy within 1 point" (see README, Pruning)
DIGITS_BEST = PruneOptions(target_macs=0.5, criterion="activation", strategy="global", recover="lstsq")


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
    plain, _ = prune_model(model, PruneOptions(ratio=0.3, recover="none"), shapes, calib)
    fitted, report = prune_model(model, PruneOptions(ratio=0.3, recover="lstsq"), shapes, calib)
    assert report["recovery"]["layers"] >= 40
    cos_plain = fidelity(model, plain, held_out).outputs[0].cosine_mean
    cos_fit = fidelity(model, fitted, held_out).outputs[0].cosine_mean
    # measured: 0.02 -> 0.36 (the goal, 0.9, is not reached yet; see README, Pruning)
    assert cos_fit > cos_plain + 0.2, (cos_plain, cos_fit)


# per-group ratios from `onnxopt sensitivity` on two text pages (criterion activation, ratios
# 0.3/0.5/0.7): each group's largest ratio that alone keeps the output cosine >= 0.95; unlisted
# groups (most of the backbone: one group at 0.3 alone drops the cosine to 0.07-0.5) stay whole
DET_SENSITIVE = ("p2o.Conv.33=0.7|p2o.Conv.47=0.7|p2o.Conv.44=0.7|p2o.Conv.41=0.7|p2o.Conv.22=0.7|p2o.Conv.26=0.7|"
                 "p2o.Conv.32=0.5|p2o.Conv.36=0.7|p2o.Conv.38=0.7|p2o.Conv.49=0.7|p2o.Conv.50=0.7|p2o.Conv.52=0.7|"
                 "p2o.Conv.53=0.7|p2o.Conv.55=0.3|p2o.Conv.56=0.7|p2o.Conv.58=0.7|p2o.Conv.59=0.7").split("|")


@pytest.mark.slow
def test_ppocr_det_sensitivity_ratios_with_recovery_keep_cosine():
    model = load_corpus("ppocr_det")
    shapes = CORPUS_SHAPES["ppocr_det"]
    calib = Dataset({"x": det_inputs(8, seed=0)}, None, "text pages, seed 0")
    held_out = Dataset({"x": det_inputs(8, seed=1)}, None, "text pages, seed 1")
    opts = PruneOptions(ratio=0.0, overrides=tuple(DET_SENSITIVE), criterion="activation", recover="lstsq")
    pruned, report = prune_model(model, opts, shapes, calib)
    drop = 1 - model_stats(pruned, shapes).macs_known / model_stats(model, shapes).macs_known
    cosine = fidelity(model, pruned, held_out).outputs[0].cosine_mean
    # measured: MACs -36.5%, held-out cosine 0.913 (0.649 without recovery); see README, Pruning
    assert drop >= 0.35, drop
    assert cosine >= 0.9, cosine
    assert report["recovery"]["layers"] >= 15
