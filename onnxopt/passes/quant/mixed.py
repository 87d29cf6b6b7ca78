"""Accuracy-keeping mixed precision: int8 everywhere except the fewest, most sensitive nodes.

1. Quantize everything (QDQ) and compare every activation with the float model's
   (onnxruntime's ``qdq_loss_debug``: ``xmodel_err``, the SQNR in dB of the QDQ model's tensor
   against the float model's tensor of the same name).
2. Rank the quantizable nodes: first those around the tensors whose Q/DQ pair, taken out alone,
   removes the most output error (:mod:`onnxopt.passes.quant.damage`, measured); then the rest by how
   much SQNR they *lose*: the worst SQNR arriving on their inputs minus the SQNR leaving their
   output, so a late node is not blamed for earlier noise.
3. Bisect on how many top-ranked nodes to keep in float until the target holds
   (:func:`onnxopt.passes.quant.search.bisect_fallback`).

Why not ``qdq_err`` (a tensor against its own Q->DQ round trip in the QDQ model)? The quantizer
folds a Relu/Clip into the Conv before it and gives the Conv's output the Relu's tensor name, so
for every such tensor ``pre_qdq`` is the pre-activation and ``post_qdq`` the clipped one: the
"noise" is the negative half of the signal. ``xmodel_err`` compares tensors
that mean the same thing in both models.

The report lists every node kept in float with its output SQNR and the dB it loses, and the
costliest tensors with the error each removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.errors import ConfigError
from onnxopt.model import available_memory, input_specs
from onnxopt.passes.quant.calib import FeedReader, dataset_feeds
from onnxopt.passes.quant.damage import node_order, run_feeds, tensor_gains
from onnxopt.passes.quant.nodetime import Anchors
from onnxopt.passes.quant.ortio import quiet, workdir, write_model
from onnxopt.passes.quant.search import SearchResult, bisect_fallback
from onnxopt.passes.quant.static import StaticQuantizer
from onnxopt.passes.quant.wide import wide_overrides
from onnxopt.targets import Judge

RANK_SAMPLES = 4
# percentiles tried when the user's calibration misses the target: they clip long activation tails
CLIPPINGS = (99.99, 99.9)
MAX_DB = 100.0  # a graph input's SQNR when none was measured: above anything int8 reaches


def _activation_sqnr(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    """Tensor -> SQNR (dB) of the QDQ model's activation against the float model's (``xmodel_err``)."""
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
    return {name: float(err["xmodel_err"]) for name, err in errors.items() if "xmodel_err" in err}


def _weight_sqnr(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto) -> dict[str, float]:
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with workdir() as work, quiet():
        f = write_model(float_model, work / "float.onnx")
        q = write_model(qdq_model, work / "qdq.onnx")
        matched = dbg.create_weight_matching(str(f), str(q))
    # a scalar weight (PP-OCR det's ``Mul`` by a constant) dequantizes to a numpy scalar, which
    # compute_weight_error cannot take: hand ORT's own SQNR function 1-d arrays instead
    return {name: float(dbg.compute_signal_to_quantization_noice_ratio(
        np.atleast_1d(np.asarray(m["float"], np.float32)), np.atleast_1d(np.asarray(m["dequantized"], np.float32))))
        for name, m in matched.items()}


@dataclass(frozen=True)
class Sensitivity:
    """A node's output SQNR against float (dB), the dB it loses, and its weight's SQNR."""

    node: str
    output_db: float
    loss_db: float
    weight_db: float | None = None
    members: tuple[str, ...] = ()

    def row(self) -> dict:
        return {"node": self.node, "output_sqnr_db": round(self.output_db, 2), "loss_db": round(self.loss_db, 2),
                "weight_sqnr_db": None if self.weight_db is None else round(self.weight_db, 2)}


def ranking_feeds(model: onnx.ModelProto, data) -> list[dict]:
    """Up to :data:`RANK_SAMPLES` samples, fewer where every activation of one would not fit."""
    specs = input_specs(model)
    feeds = list(dataset_feeds(data, specs, 1))
    per_sample = sum(np.asarray(v).nbytes for v in feeds[0].values()) * 64  # rough: activations >> inputs
    samples = int(max(1, min(RANK_SAMPLES, available_memory() // 8 // max(per_sample, 1))))
    return list(dataset_feeds(data, specs, samples))


def rank_nodes(quantizer: StaticQuantizer, qdq_model: onnx.ModelProto, feeds: list[dict]) -> list[Sensitivity]:
    """Quantizable groups (a Conv/Gemm with the Relu/Clip the quantizer folds into it, named by the
    Conv) by the SQNR they lose (dB), most sensitive first."""
    acts = _activation_sqnr(quantizer.model, qdq_model, feeds)
    weights = _weight_sqnr(quantizer.model, qdq_model)
    nodes = {n.name: n for n in quantizer.model.graph.node}
    producer = {o: n for n in quantizer.model.graph.node for o in n.output}

    def arriving(tensor: str, depth: int = 3) -> float | None:
        """SQNR on a tensor; for one the quantizer renamed away (a folded Relu's input), upstream's."""
        if tensor in acts:
            return acts[tensor] if np.isfinite(acts[tensor]) else None
        if depth == 0 or tensor not in producer:
            return None
        found = [v for v in (arriving(t, depth - 1) for t in producer[tensor].input) if v is not None]
        return min(found) if found else None

    ranked = []
    for head, members in Anchors(quantizer.model, quantizer.quantizable()).members().items():
        outputs = [acts[t] for t in nodes[members[-1]].output if t in acts]
        if not outputs or not np.isfinite(min(outputs)):
            continue
        inputs = [v for v in (arriving(t) for t in nodes[head].input if t not in weights) if v is not None]
        weight = min((weights[t] for t in nodes[head].input if t in weights), default=None)
        out = min(outputs)
        ranked.append(Sensitivity(head, out, (min(inputs) if inputs else MAX_DB) - out, weight, tuple(members)))
    ranked.sort(key=lambda s: (-s.loss_db, s.output_db))
    return ranked


def keep_accuracy(quantizer: StaticQuantizer, judge: Judge, data, notes: list[str]) -> SearchResult:
    """Quantize with the fewest float nodes that meet the judge's target; notes say which and why."""
    from dataclasses import replace

    quantizer, calibrations = choose_calibration(quantizer, judge, notes)
    ranking_quantizer = quantizer
    if quantizer.settings.format != "qdq":  # qdq_loss_debug reads QDQ models; rank on one, build in the asked format
        ranking_quantizer = _as_qdq(quantizer, replace)
    qdq_model = ranking_quantizer.quantize()
    feeds = ranking_feeds(quantizer.model, data)
    ranked = rank_nodes(quantizer, qdq_model, feeds)
    sqnr = {s.node: s for s in ranked}
    groups = {s.node: s.members or (s.node,) for s in ranked}
    # nodes the SQNR could not rank (no matched or finite activation: PP-OCR cls's, det's hardswish
    # "x + 3" Adds) still join the order, or "all candidates in float" would leave them quantized
    # and could miss the target. They go after the nodes measured to lose dB and before those
    # measured to lose none: not last, since on det those Adds alone, quantized with every other
    # node in float, kept the output short of a tight target
    covered = {m for members in groups.values() for m in members}
    for name in quantizer.quantizable():
        if name not in covered:
            groups[name] = (name,)
    unranked = [n for n in groups if n not in sqnr]
    by_sqnr = [s.node for s in ranked if s.loss_db > 0] + unranked + [s.node for s in ranked if s.loss_db <= 0]
    # measured first: the nodes around the tensors whose quantization costs the output most; the
    # SQNR order breaks the ties among those measured to cost nothing
    with quiet():
        reference = run_feeds(quantizer.model, feeds)
        gains = tensor_gains(quantizer.model, qdq_model, feeds, reference)
    head_of = {m: head for head, members in groups.items() for m in members}
    measured = node_order(gains, head_of)
    orders = {"measured damage": measured + [n for n in by_sqnr if n not in set(measured)], "SQNR": by_sqnr}

    fallback = quantizer.cfg.fallback
    wide = fallback != "float"
    if wide and quantizer.settings.format != "qdq":
        raise ConfigError(f"fallback={fallback} needs format=qdq (16-bit QOperator kernels do not exist)",
                          "use format=qdq or fallback=float")

    built: list[set[str]] = []  # every model built and scored, over both orders

    def build(heads: set[str]) -> onnx.ModelProto:
        built.append(heads)
        nodes = {m for h in heads for m in groups[h]}
        if wide:  # 16-bit instead of float: u16 activations, and s16 weights unless a16w8 (onnxopt.passes.quant.wide)
            return quantizer.quantize(overrides=wide_overrides(quantizer.model, nodes,
                                                               quantizer.settings.activation_type,
                                                               quantizer.wide_ranges, weights=fallback == "int16"))
        return quantizer.quantize(nodes)

    # both orders are searched and the smaller fallback kept: measured damage needs fewer float
    # nodes where the error sits in a few tensors (PP-OCR det), SQNR can do better on long residual
    # chains (ResNet-50); docs/benchmarks.md has both
    seen: dict = {}  # the orders share their all-int8 and all-float attempts
    where = {"int16": "at 16-bit (u16 activations, s16 weights)", "a16w8": "at 16-bit (u16 activations, 8-bit weights)",
             "float": "in float"}[fallback]
    results = {name: bisect_fallback(order, build, judge, "mixed precision", seen, where)
               for name, order in orders.items()}

    def size(r: SearchResult) -> int:
        return len({m for h in r.kept for m in groups[h]})

    sizes = {name: size(r) for name, r in results.items()}
    chosen = min(results, key=lambda name: (sizes[name], -judge.margin(results[name].scores)))
    result = results[chosen]
    result.trail = [{"order": name, **row} for name, r in results.items() for row in r.trail]
    result.calibration = calibrations
    result.kept = [m for h in result.kept for m in groups[h]]
    total = len(quantizer.quantizable())
    notes.append(f"mixed precision: {len(result.kept)} of {total} quantizable node(s) kept {where} "
                 f"({100 * len(result.kept) / max(total, 1):.1f}%) to meet {', '.join(map(str, judge.criteria))}; "
                 f"{judge.describe(result.scores)} after {len(built)} evaluations; ranked by {chosen} ("
                 + ", ".join(f"{name} order: {n}" for name, n in sizes.items()) + ")")
    if result.kept:
        notes.append(f"kept {where} (output SQNR vs float dB / dB lost in the node): " + ", ".join(
            f"{n} ({sqnr[n].output_db:.1f}/{sqnr[n].loss_db:.1f})" for n in result.kept[:20] if n in sqnr)
            + (" ..." if len(result.kept) > 20 else ""))
    costly = [g for g in gains if g.gain > 0][:10]
    if costly:
        notes.append("costliest quantized tensors (output error their Q/DQ adds, measured one at a time): "
                     + ", ".join(f"{g.tensor} ({g.gain:.2g})" for g in costly))
    result.scores["sensitivity"] = [s.row() for s in ranked]
    result.scores["tensor_damage"] = [g.row() for g in gains[:50]]
    return result


def choose_calibration(quantizer: StaticQuantizer, judge: Judge,
                       notes: list[str]) -> tuple[StaticQuantizer, list[dict]]:
    """The user's calibration if it meets the target with every node in int8; otherwise whichever of
    it and the percentile clippings (:data:`CLIPPINGS`, one histogram pass) scores best that way.

    Long-tailed activations (hardswish: a wide range with most values near zero) waste
    the 8-bit grid on the tail under minmax; clipping the tail fixes most of the error for free, so
    fewer nodes must leave int8 afterwards."""
    scores = judge.score(quantizer.quantize())
    trail = [{"calibration": quantizer.info.method, **scores, "meets_target": judge.holds(scores)}]
    if judge.holds(scores):
        return quantizer, trail
    best, best_scores = quantizer, scores
    tried = [p for p in CLIPPINGS if not (quantizer.cfg.method == "percentile" and quantizer.cfg.percentile == p)]
    for clone in quantizer.clipped(tried).values():
        clipped = judge.score(clone.quantize())
        trail.append({"calibration": clone.info.method, **clipped, "meets_target": judge.holds(clipped)})
        if judge.margin(clipped) > judge.margin(best_scores):
            best, best_scores = clone, clipped
    summary = "; ".join(f"{t['calibration']}: cosine {t['cosine']:.4f}" for t in trail)
    if best is quantizer:
        notes.append(f"calibration: kept {quantizer.info.method}: it missed the target with every node in int8, "
                     f"and no percentile clipping did better ({summary})")
    else:
        notes.append(f"calibration: switched from {quantizer.info.method} to {best.info.method}, chosen by the "
                     f"search because {quantizer.info.method} missed the target with every node in int8 "
                     f"(all nodes int8: {summary})" + ("; 16-bit fallback tensors keep the unclipped ranges"
                                                       if quantizer.cfg.fallback != "float" else ""))
    return best, trail


def _as_qdq(quantizer: StaticQuantizer, replace) -> StaticQuantizer:
    clone = object.__new__(StaticQuantizer)
    clone.__dict__.update(quantizer.__dict__)
    clone.settings = replace(quantizer.settings, format="qdq")
    return clone
