"""Latency-aware partial quantization: quantize only the nodes that get faster on this machine.

On CPUs without VNNI, int8 is often slower than fp32 (depthwise convs, 5-D Transposes, unfused
Q/DQ pairs at every float/int8 boundary). So:

1. Profile the float model and the fully quantized one with onnxruntime's per-node profiler and
   attribute each kernel to a *group* (a quantizable node plus what fuses into it, see
   :mod:`onnxopt.passes.quant.nodetime`). A standalone Q/DQ counts against the group that needs it.
2. Keep in float every group whose int8 time is not below its float time.
3. Rebuild and profile the partial model: new float/int8 boundaries add Q/DQ nodes, so a group
   that is no longer faster with its boundary overhead goes back to float; repeat (few rounds).
4. Measure the whole models (fp32 input, partial, full int8) interleaved, and return the fastest;
   when that is the fp32 input, return it unchanged with a WARNING note.

All timing comes from the pass context's measurer (:class:`~onnxopt.passes.measurer.Measurer`:
the profiling layer's service, on the target profile); this module only decides. The per-node
timer and the whole-model timer can also be given directly, so the decision logic is testable with
a fake timing table.

Example::

    result = latency_aware(quantizer, model, feeds, ctx.measurer)
    result.model, result.choice, [d.row() for d in result.decisions]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.passes.measurer import Measurer
from onnxopt.passes.quant.nodetime import Anchors, Timing, profile_nodes
from onnxopt.passes.quant.static import StaticQuantizer

Timer = Callable[[onnx.ModelProto], Timing]
Whole = Callable[[Mapping[str, onnx.ModelProto]], dict[str, list[float]]]
ROUNDS = 3  # refinement rounds after the first decision; each is one quantize + one profile
# a quantized variant must beat the fp32 input by this much: smaller gaps are within the noise of
# interleaved timing on a shared machine, and "never slower than the input" is the promise
MIN_GAIN = 1.05


@dataclass
class Decision:
    """One group's choice and the per-node timings behind it (microseconds per run, medians)."""

    node: str
    op: str
    members: list[str]
    float_us: float
    int8_us: float
    decision: str = "int8"
    reason: str = ""

    def row(self) -> dict:
        return {"node": self.node, "op": self.op, "float_us": round(self.float_us, 1),
                "int8_us": round(self.int8_us, 1), "decision": self.decision, "reason": self.reason,
                "members": self.members}


@dataclass
class LatencyResult:
    model: onnx.ModelProto
    choice: str  # "fp32", "int8" or "partial N"
    decisions: list[Decision]
    whole: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)
    unattributed_us: dict[str, float] = field(default_factory=dict)
    scores: dict[str, dict] = field(default_factory=dict)  # variant -> fidelity scores, when judged

    def kept_in_float(self) -> list[str]:
        return sorted(_kept(self.decisions))


def decide(groups: Mapping[str, list[str]], ops: Mapping[str, str], float_t: Mapping[str, float],
           int8_t: Mapping[str, float]) -> list[Decision]:
    """int8 for the groups measured faster in int8 (Q/DQ overhead included), float for the rest."""
    decisions = []
    for head, members in groups.items():
        f, q = float_t.get(head, 0.0), int8_t.get(head, 0.0)
        d = Decision(head, ops.get(head, "?"), list(members), f, q)
        if q >= f:
            d.decision, d.reason = "float", "not faster in int8" if f > 0 else "free in float (fused away)"
        decisions.append(d)
    return decisions


def refine(decisions: Sequence[Decision], int8_t: Mapping[str, float], round_no: int) -> int:
    """Send back to float the int8 groups that the partial model's profile shows no faster; how many."""
    changed = 0
    for d in decisions:
        if d.decision != "int8" or d.node not in int8_t:
            continue
        d.int8_us = int8_t[d.node]
        if d.int8_us >= d.float_us:
            d.decision, d.reason = "float", f"not faster with its float/int8 boundary Q/DQ (round {round_no})"
            changed += 1
    return changed


@dataclass
class Variant:
    """A candidate model and the groups it keeps in float."""

    model: onnx.ModelProto
    keep: frozenset[str]


def search(quantizer: StaticQuantizer, timer: Timer
           ) -> tuple[list[Decision], dict[str, Variant], dict[str, float], list[str]]:
    """Per-group decisions and every variant built on the way: "int8" (all quantized) and "partial N"
    after N refinement rounds, and the timer's notes. Refinement can cascade (one group in float puts
    Q/DQ at its neighbours, which then look slow too), so the whole-model measurement picks among them all."""
    anchors = Anchors(quantizer.model, quantizer.quantizable())
    float_t, full = timer(quantizer.model), quantizer.quantize()
    int8_t = timer(full)
    unattributed = {"fp32": float_t.unattributed_us, "int8": int8_t.unattributed_us}
    notes = list(dict.fromkeys(filter(None, [float_t.note, int8_t.note])))
    decisions = decide(anchors.members(), anchors.ops, float_t.per_anchor, int8_t.per_anchor)
    variants = {"int8": Variant(full, frozenset())}
    for round_no in range(ROUNDS + 1):
        keep = frozenset(_kept(decisions))
        # every group in float is the fp32 input again: timing it against fp32 would only measure noise
        if keep in {v.keep for v in variants.values()} or all(d.decision == "float" for d in decisions):
            break
        variants[f"partial {round_no}"] = Variant(quantizer.quantize(keep), keep)
        if round_no == ROUNDS or all(d.decision == "float" for d in decisions):
            break
        timing = timer(variants[f"partial {round_no}"].model)
        unattributed[f"partial {round_no}"] = timing.unattributed_us
        if not refine(decisions, timing.per_anchor, round_no + 1):
            break
    return decisions, variants, unattributed, notes


def _kept(decisions: Sequence[Decision]) -> set[str]:
    return {m for d in decisions if d.decision == "float" for m in d.members}


def chosen(decisions: Sequence[Decision], keep: frozenset[str]) -> None:
    """Make the decisions say what the chosen variant does (a later round may have floated more)."""
    for d in decisions:
        in_float = set(d.members) <= keep
        if d.decision == "float" and not in_float:
            d.decision, d.reason = "int8", f"int8 in the faster variant ({d.reason} in a later one)"
        elif d.decision == "int8" and in_float:  # cannot happen: keep sets only grow; kept for safety
            d.decision, d.reason = "float", "float in the chosen variant"


def latency_aware(quantizer: StaticQuantizer, original: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]],
                  measurer: Measurer | None = None, *, timer: Timer | None = None, whole: Whole | None = None,
                  judge=None, extra: Mapping[str, Variant] | None = None) -> LatencyResult:
    """The fastest by measured latency of: the fp32 input, full int8, the partial variants and
    ``extra`` (e.g. the accuracy search's model) -- among those that ``judge`` (a
    :class:`~onnxopt.targets.Judge`: the user's target, or a fidelity floor) accepts. ``measurer``
    times them, unless both ``timer`` and ``whole`` are given."""
    if timer is None:
        anchors = Anchors(quantizer.model, quantizer.quantizable())

        def timer(model: onnx.ModelProto) -> Timing:
            return profile_nodes(model, feeds, anchors, measurer)
    if whole is None:
        def whole(models: Mapping[str, onnx.ModelProto]) -> dict[str, list[float]]:
            return measurer.whole(models, feeds)
    decisions, variants, unattributed, timer_notes = search(quantizer, timer)
    variants.update(extra or {})
    times = whole({"fp32": original, **{label: v.model for label, v in variants.items()}})
    stats = {label: summarize(values, times["fp32"]) for label, values in times.items()}
    scores = {label: judge.score(v.model) for label, v in variants.items()} if judge is not None else {}
    fit = [label for label in stats if label == "fp32" or (stats[label]["speedup"] >= MIN_GAIN
                                                           and (judge is None or judge.holds(scores[label])))]
    choice = min(fit, key=lambda label: (stats[label]["median_ms"], label == "fp32"))
    model = original if choice == "fp32" else variants[choice].model
    chosen(decisions, frozenset(_kept(decisions)) if choice == "fp32" else variants[choice].keep)
    result = LatencyResult(model, choice, decisions, stats, unattributed_us=unattributed, scores=scores)
    result.notes.extend(timer_notes)
    result.notes.extend(_notes(result))
    if judge is not None:
        result.notes.extend(_fidelity_notes(result, judge, stats))
    return result


def _fidelity_notes(result: LatencyResult, judge, stats: Mapping[str, dict[str, float]]) -> list[str]:
    """Say which faster variants were refused for fidelity: never drop a broken model silently."""
    faster = [k for k in stats if k != "fp32" and stats[k]["median_ms"] < stats[result.choice]["median_ms"]]
    criteria = ", ".join(map(str, judge.criteria))
    notes = [f"latency-aware: scored against {criteria} on {len(judge.data)} held-out sample(s): " + "; ".join(
        f"{k} {judge.describe(v)}" for k, v in result.scores.items())]
    if faster:
        prefix = "WARNING: " if result.choice == "fp32" else ""
        notes.append(f"{prefix}latency-aware: refused the faster {', '.join(faster)}: they miss {criteria}; "
                     f"returned {result.choice!r}")
    return notes


def _notes(result: LatencyResult) -> list[str]:
    s = result.whole
    floated = [d for d in result.decisions if d.decision == "float"]
    notes = ["latency-aware medians (interleaved): " + ", ".join(
        f"{k} {v['median_ms']:.3f} ms ({v['speedup']:.2f}x vs fp32, p10-p90 {v['p10_ms']:.3f}-{v['p90_ms']:.3f}, "
        f"n={v['n']:.0f})" for k, v in s.items())]
    if result.choice == "fp32":
        best = max((k for k in s if k != "fp32"), key=lambda k: s[k]["speedup"])
        why = (f"at least {MIN_GAIN:.2f}x faster than the fp32 input on this machine"
               + (" and within the fidelity bar" if result.scores else ""))
        notes.append(f"WARNING: latency-aware: no quantized variant was {why} "
                     f"(fastest: {best} at {s[best]['speedup']:.2f}x); returned the float input UNCHANGED")
    else:
        what = (f"{len(floated)} of {len(result.decisions)} quantizable group(s) kept in float, as they were not "
                "faster in int8 on this machine (per-node onnxruntime profile)") if floated else "every group in int8"
        notes.append(f"latency-aware: returned {result.choice!r} ({s[result.choice]['speedup']:.2f}x vs fp32): {what}")
    return notes


def summarize(values: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(values) * 1e3
    median = float(np.median(ms))
    return {"median_ms": median, "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90)),
            "n": float(len(ms)), "speedup": float(np.median(reference) * 1e3 / median) if median else 0.0}
