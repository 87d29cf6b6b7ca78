"""Accuracy-keeping mixed precision: int8 everywhere except the fewest, most sensitive nodes.

1. Quantize everything (QDQ) and measure each activation's *local* quantization noise with
   onnxruntime's ``qdq_loss_debug`` (SQNR of a float tensor against its own Q->DQ round trip, so
   errors from earlier layers do not make late layers look guilty). Weights get their SQNR too.
2. Rank the quantizable nodes by the worst SQNR on their inputs, output and weight.
3. Bisect on how many top-ranked nodes to keep in float until the target holds
   (:func:`onnxopt.quant.search.bisect_fallback`).

The report lists every node kept in float with the SQNR (dB) it carried.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.model import available_memory, input_specs
from onnxopt.quant.calib import FeedReader, dataset_feeds
from onnxopt.quant.ortio import quiet, workdir, write_model
from onnxopt.quant.search import SearchResult, bisect_fallback
from onnxopt.quant.static import StaticQuantizer
from onnxopt.quant.targets import Judge

RANK_SAMPLES = 4


def _activation_sqnr(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with workdir() as work, quiet():
        src = write_model(qdq_model, work / "qdq.onnx")
        dbg.modify_model_output_intermediate_tensors(str(src), str(work / "qdq_aug.onnx"))
        fsrc = write_model(float_model, work / "float.onnx")
        dbg.modify_model_output_intermediate_tensors(str(fsrc), str(work / "float_aug.onnx"))
        qdq_acts = dbg.collect_activations(str(work / "qdq_aug.onnx"), FeedReader(feeds))
        float_acts = dbg.collect_activations(str(work / "float_aug.onnx"), FeedReader(feeds))
    matched = dbg.create_activation_matching(qdq_acts, float_acts)
    errors = dbg.compute_activation_error(matched)
    return {name: float(err["qdq_err"]) for name, err in errors.items() if "qdq_err" in err}


def _weight_sqnr(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto) -> dict[str, float]:
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with workdir() as work, quiet():
        f = write_model(float_model, work / "float.onnx")
        q = write_model(qdq_model, work / "qdq.onnx")
        matched = dbg.create_weight_matching(str(f), str(q))
    return {name: float(v) for name, v in dbg.compute_weight_error(matched).items()}


def rank_nodes(quantizer: StaticQuantizer, qdq_model: onnx.ModelProto, data) -> list[tuple[str, float]]:
    """Quantizable nodes with their worst SQNR (dB), most sensitive first."""
    specs = input_specs(quantizer.model)
    feeds = list(dataset_feeds(data, specs, 1))
    per_sample = sum(np.asarray(v).nbytes for v in feeds[0].values()) * 64  # rough: activations >> inputs
    samples = int(max(1, min(RANK_SAMPLES, available_memory() // 8 // max(per_sample, 1))))
    feeds = list(dataset_feeds(data, specs, samples))
    acts = _activation_sqnr(quantizer.model, qdq_model, feeds)
    weights = _weight_sqnr(quantizer.model, qdq_model)
    wanted = set(quantizer.quantizable())
    ranked = []
    for node in quantizer.model.graph.node:
        if node.name not in wanted:
            continue
        values = [acts[t] for t in list(node.input) + list(node.output) if t in acts]
        values += [weights[t] for t in node.input if t in weights]
        finite = [v for v in values if np.isfinite(v)]
        if finite:
            ranked.append((node.name, min(finite)))
    ranked.sort(key=lambda item: item[1])
    return ranked


def keep_accuracy(quantizer: StaticQuantizer, judge: Judge, data, notes: list[str]) -> SearchResult:
    """Quantize with the fewest float nodes that meet the judge's target; notes say which and why."""
    from dataclasses import replace

    ranking_quantizer = quantizer
    if quantizer.settings.format != "qdq":  # qdq_loss_debug reads QDQ models; rank on one, build in the asked format
        ranking_quantizer = _as_qdq(quantizer, replace)
    ranked = rank_nodes(quantizer, ranking_quantizer.quantize(), data)
    sqnr = dict(ranked)
    result = bisect_fallback([name for name, _ in ranked], quantizer.quantize, judge, "mixed precision")
    total = len(quantizer.quantizable())
    notes.append(f"mixed precision: {len(result.kept)} of {total} quantizable node(s) kept in float "
                 f"({100 * len(result.kept) / max(total, 1):.1f}%) to meet {', '.join(map(str, judge.criteria))}; "
                 f"{judge.describe(result.scores)} after {len(result.trail)} evaluations")
    if result.kept:
        notes.append("kept in float (local SQNR dB): " + ", ".join(f"{n} ({sqnr.get(n, float('nan')):.1f})"
                                                                   for n in result.kept[:20])
                     + (" ..." if len(result.kept) > 20 else ""))
    result.scores["sqnr_db"] = {n: sqnr.get(n) for n in result.kept}
    return result


def _as_qdq(quantizer: StaticQuantizer, replace) -> StaticQuantizer:
    clone = object.__new__(StaticQuantizer)
    clone.__dict__.update(quantizer.__dict__)
    clone.settings = replace(quantizer.settings, format="qdq")
    return clone
