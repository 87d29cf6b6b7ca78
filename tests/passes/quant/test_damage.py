"""Measured tensor damage (onnxopt.passes.quant.damage): taking Q -> DQ pairs out of a QDQ model, and the
fallback order it gives mixed precision."""

from __future__ import annotations

import numpy as np

from onnxopt.passes import PassContext
from onnxopt.passes.quant import Quantize
from onnxopt.passes.quant.config import QuantizeConfig, resolve
from onnxopt.passes.quant.damage import node_order, output_error, run_feeds, tensor_gains, without_pairs
from onnxopt.passes.quant.mixed import ranking_feeds
from onnxopt.passes.quant.static import StaticQuantizer


def _quantized(model, data, **options):
    cfg = QuantizeConfig(**options)
    quantizer = StaticQuantizer(model, data, cfg, resolve(cfg))
    return quantizer, quantizer.quantize()


def test_without_every_pair_only_the_weights_are_quantized(ppocr_cls):
    """Taking out every activation pair must leave the float function up to s8 weight rounding; the
    quantizer folded cls's Relu/Clip activations into the Q before them, and those come back."""
    model, data = ppocr_cls
    quantizer, qdq = _quantized(model, data, calib_size=8)
    feeds = ranking_feeds(quantizer.model, data)
    reference = run_feeds(quantizer.model, feeds)
    stripped = without_pairs(quantizer.model, qdq)
    constants = {i.name for i in stripped.graph.initializer}
    assert all(n.input[0] in constants for n in stripped.graph.node if n.op_type == "DequantizeLinear")
    assert output_error(reference, run_feeds(stripped, feeds)) < 1e-4
    assert output_error(reference, run_feeds(qdq, feeds)) > output_error(reference, run_feeds(stripped, feeds))


def test_gains_rank_the_tensors_whose_rounding_costs_the_output(digits):
    model, calib, _ = digits
    quantizer, qdq = _quantized(model, calib, method="minmax", calib_size=64)
    feeds = ranking_feeds(quantizer.model, calib)
    reference = run_feeds(quantizer.model, feeds)
    gains = tensor_gains(quantizer.model, qdq, feeds, reference)
    assert len(gains) >= 10 and gains[0].gain > 0 and gains[0].gain >= gains[-1].gain
    # the top tensor's pair out, on its own, removes what its gain says
    base = output_error(reference, run_feeds(qdq, feeds))
    alone = output_error(reference, run_feeds(without_pairs(quantizer.model, qdq, [gains[0].tensor]), feeds))
    assert np.isclose(base - alone, gains[0].gain, rtol=1e-6, atol=1e-12)
    heads = {n: n for n in quantizer.quantizable()}
    order = node_order(gains, heads)
    assert order and set(order) <= set(heads) and set(gains[0].nodes) & set(heads) <= set(order[:3])


def test_mixed_report_names_the_costliest_tensors(digits):
    model, calib, _ = digits
    ctx = PassContext(data=calib)
    Quantize(target="cosine>=0.99995").apply(model, ctx)
    rows = ctx.details["quantize"]["scores"]["tensor_damage"]
    assert rows and rows[0]["error_removed"] >= rows[-1]["error_removed"] and rows[0]["nodes"]
    assert any(n.startswith("costliest quantized tensors") for n in ctx.notes)


def test_weights_are_measured_too_and_all_out_is_float(digits):
    """Weight DQs are candidates as well (named by the float weight); with every activation pair and
    weight DQ out, only the int32 biases are rounded: the float function up to that."""
    model, calib, _ = digits
    quantizer, qdq = _quantized(model, calib, calib_size=64)
    feeds = ranking_feeds(quantizer.model, calib)
    reference = run_feeds(quantizer.model, feeds)
    gains = tensor_gains(quantizer.model, qdq, feeds, reference, weights=True)
    weights = {i.name for i in quantizer.model.graph.initializer}
    measured_weights = [g for g in gains if g.tensor in weights]
    assert len(measured_weights) >= 5 and all(g.nodes for g in measured_weights)
    everything = without_pairs(quantizer.model, qdq, [g.tensor for g in gains])
    assert output_error(reference, run_feeds(everything, feeds)) < 1e-6
