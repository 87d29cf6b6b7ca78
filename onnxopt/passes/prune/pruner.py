"""Structured pruning end to end: analyse, score, choose, cut, recover; and the report.

Example::

    pruned, report = prune_model(model, PruneOptions(ratio=0.3, round_to=8), shapes={"x": [1, 3, 320, 320]})
    report["groups_prunable"], report["macs_coverage"]["fraction"]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxopt.errors import ConfigError
from onnxopt.passes.prune.activations import Calibration
from onnxopt.passes.prune.analyze import Result, analyze, coverage
from onnxopt.passes.prune.apply import Plan, cut, guard, kept_channels, kept_outputs
from onnxopt.passes.prune.importance import class_scores, resolve_criterion
from onnxopt.passes.prune.ratios import Budget, choose
from onnxopt.passes.prune.shift import apply_shifts, mean_shifts


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = 0.3
    strategy: str = "uniform"
    criterion: str = "auto"  # auto: variance when calibration data is given, else l2
    aggregate: str = "mean"
    round_to: int = 1
    min_channels: int = 1
    overrides: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    target_macs: float | None = None  # fraction of MACs to remove, instead of ``ratio``
    recover: str = "auto"  # auto (lstsq when data is given), lstsq, bias (mean shift only), none
    seed: int = 0
    refit_inputs: str = "pruned"  # pruned: layer by layer (exact, slow); original: one run per chunk
    round_from: int = 0  # groups narrower than this are not rounded (see ratios.auto_rounding)
    refit_layers: str = "cut"  # cut: consumers of cut channels; downstream: also every layer after them


def estimate_macs(result: Result, removed: set[int]) -> int:
    """MACs after removing ``removed``: each layer scales by its kept input and output fractions."""
    plan = Plan(result, removed)
    total = 0
    for mac in result.an.macs:
        macs = result.node_macs.get(mac.node.name or mac.node.outputs[0].name, 0)
        out_frac = plan.kept(mac.out_atoms).size / mac.out_atoms.size if mac.out_atoms is not None else 1.0
        in_frac = plan.kept(mac.in_atoms).size / mac.in_atoms.size if mac.in_atoms is not None else 1.0
        total += macs * (out_frac if mac.depthwise else out_frac * in_frac)
    untouched = sum(result.node_macs.values()) - sum(
        result.node_macs.get(m.node.name or m.node.outputs[0].name, 0) for m in result.an.macs)
    return int(total + untouched)


def select(result: Result, scores: dict[int, float], opts: PruneOptions, model: onnx.ModelProto | None = None,
           shapes=None, calib=None) -> set[int]:
    """Classes to remove for a ratio, or, with ``target_macs``, the smallest ratio reaching it;
    ``strategy=sensitivity`` measures each group's curve on ``calib`` and spends the budget there."""
    def budget(ratio: float) -> Budget:
        return Budget(ratio, opts.strategy, opts.round_to, opts.min_channels, opts.overrides, opts.ignore,
                      opts.round_from)

    if opts.strategy == "sensitivity":
        from onnxopt.passes.prune.sensitivity import allocate

        removed, trail = allocate(result, scores, budget(opts.ratio), model, shapes, calib, opts.target_macs,
                                  refit=opts.recover in ("auto", "lstsq"))
        result.allocation = trail
        return removed

    def for_ratio(ratio: float) -> set[int]:
        return guard(result, choose(result.groups, scores, budget(ratio)))

    if opts.target_macs is None:
        return for_ratio(opts.ratio) if opts.ratio > 0 or opts.overrides else set()
    total = sum(result.node_macs.values()) or 1
    low, high, best = 0.0, 0.95, for_ratio(0.95)
    for _ in range(12):  # bisection on the ratio; MACs fall monotonically with it
        mid = (low + high) / 2
        removed = for_ratio(mid)
        if 1 - estimate_macs(result, removed) / total >= opts.target_macs:
            high, best = mid, removed
        else:
            low = mid
    return best


def prune_model(model: onnx.ModelProto, opts: PruneOptions, shapes: Mapping[str, Sequence[int]] | None = None,
                data: object = None) -> tuple[onnx.ModelProto, dict]:
    """Prune ``model``; returns the new model (the input itself when nothing is removed) and a report."""
    mode = opts.recover if opts.recover != "auto" else ("lstsq" if data is not None else "none")
    if mode != "none" and data is None:
        raise ConfigError(f"recover={mode} needs calibration data", "pass calibration data, or recover=none")
    calib = Calibration.of(data)
    result = analyze(model, shapes)
    criterion = resolve_criterion(opts.criterion, data)
    scores = class_scores(result, criterion, opts.aggregate, calib)
    removed = select(result, scores, opts, model, shapes, calib)
    report = describe(result, removed)
    report["criterion"] = criterion
    if result.allocation:
        report["allocation"] = result.allocation
    if not removed:
        return model, report
    kept = kept_outputs(result, removed)
    kept_in = kept_channels(result, removed) if opts.refit_inputs == "original" else None
    shifts = mean_shifts(result, removed, calib.stats(result)) if mode != "none" else {}
    pruned = cut(result, removed, like=model)
    if mode != "none":
        pruned, report["recovery"] = _recover(model, pruned, calib.data, kept, shifts, mode, opts, kept_in)
    return pruned, report


def _recover(model, pruned, data, kept, shifts, mode: str, opts: PruneOptions,
             kept_in=None) -> tuple[onnx.ModelProto, dict]:
    """Move the mean shift into the biases, then (lstsq) re-fit; ship whichever of cut, shifted and
    re-fitted is closest to the unpruned model on the calibration data, and report all three."""
    from onnxopt.passes.prune.recover import output_cosine, recover, reference_outputs

    shifted, moved = apply_shifts(pruned, shifts, kept)
    info: dict = {"mode": mode, "layers": moved, "mean_shift_layers": moved}
    candidates = {"none": pruned, "bias": shifted}
    if mode == "lstsq":
        candidates["lstsq"], fitted = recover(model, shifted, data, kept, seed=opts.seed, kept_in=kept_in,
                                              downstream=opts.refit_layers == "downstream")
        info.update(fitted, mode=mode)
    if not moved and not info["layers"]:
        return pruned, info
    expected = reference_outputs(model, data)  # the unpruned model runs once for all three
    scores = {name: round(output_cosine(model, candidate, data, expected), 6) for name, candidate in candidates.items()}
    best = max(scores, key=lambda name: (scores[name], name != "none"))
    info.update(cosine_without=scores["none"], cosine_with=scores[best], cosine_mean_shift_only=scores["bias"],
                shipped=best)
    if best != mode:  # never make it worse on the data we fitted on
        info["kept_unrecovered"] = best == "none"
    return candidates[best], info


def describe(result: Result, removed: set[int]) -> dict:
    """The report: groups (prunable or not, why, channels before/after), coverage, main reasons."""
    groups = []
    for g in result.groups:
        gone = len(set(g.classes) & removed)
        groups.append({"producers": g.producers[:6] + (["..."] if len(g.producers) > 6 else []),
                       "prunable": g.prunable, "channels": g.channels, "kept": g.channels - gone,
                       "pinned": len(g.pinned), "reasons": g.reasons[:3]})
    reasons = Counter(r.split(" ", 1)[0] + " " + _reason_kind(r) for g in result.groups if not g.prunable
                      for r in g.reasons[:1])
    total = sum(result.node_macs.values()) or 1
    after = estimate_macs(result, removed)
    return {
        "groups_total": len(result.groups),
        "groups_prunable": sum(1 for g in result.groups if g.prunable),
        "channels_removed": len(removed),
        "macs_coverage": coverage(result),
        "macs_estimate_after": after,
        "macs_estimate_drop": round(1 - after / total, 4),
        "unprunable_reasons": dict(reasons.most_common(8)),
        "groups": groups,
    }


def _reason_kind(reason: str) -> str:
    """A reason without node names, to count the main causes."""
    words = [w for w in reason.split(" ")[1:] if not (w.startswith("'") or w.endswith("'"))]
    return " ".join(words)[:80]
