"""Costs: MACs computed by hand for a small graph, params, unknown shapes reported, not guessed."""

from __future__ import annotations

from onnxopt.passes import PassContext, build
from onnxopt.stats import layer_costs, model_stats
from tests.conftest import load_corpus
from tests.helpers import tiny_classifier


def test_macs_and_params_by_hand():
    layers = {layer.name: layer for layer in layer_costs(tiny_classifier())}
    assert layers["conv1"].macs == 8 * 12 * 12 * (3 * 3 * 3)
    assert layers["deconv"].macs == 8 * 12 * 12 * (4 * 3 * 3)  # ConvTranspose counts input pixels x kernel
    assert layers["fc"].macs == 10 * 128
    assert layers["conv1"].params == 8 * 27 + 8
    stats = model_stats(tiny_classifier())
    assert stats.macs == 31104 + 41472 + 1280 and stats.layers_unknown == 0
    assert stats.op_histogram["BatchNormalization"] == 2


def test_batch_dim_counts_as_one_and_fixed_batch_scales():
    one = model_stats(tiny_classifier()).macs
    assert model_stats(tiny_classifier(), {"x": [4, 3, 12, 12]}).macs == 4 * one


def test_symbolic_spatial_dims_make_macs_unknown_not_guessed():
    model = load_corpus("ppocr_det")
    stats = model_stats(model)
    assert stats.macs is None and stats.layers_unknown > 0
    assert model_stats(model, {"x": [1, 3, 320, 320]}).macs > 0


def test_shape_arithmetic_is_seen_through():
    """PP-OCR cls computes a Reshape target at run time; its MatMul's MACs are still counted, and
    agree with the count after simplify has folded that arithmetic away."""
    shapes = {"x": [1, 3, 48, 192]}
    model = load_corpus("ppocr_cls")
    before = model_stats(model, shapes)
    simplified, _ = build("simplify").run(model, PassContext(shapes=shapes))
    assert before.layers_unknown == 0
    assert before.macs == model_stats(simplified, shapes).macs
