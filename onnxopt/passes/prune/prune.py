"""``prune``: structured channel pruning. The pass, its config (which is what ``prune_model`` takes)
and the run end to end: analyse, score, choose, cut, recover, report.

Example::

    onnxopt optimize m.onnx -o p.onnx --passes "simplify,prune:ratio=0.3,round_to=8" --calib d.npz

    pruned, report = prune_model(model, PruneConfig(ratio=0.3, round_to=8), shapes={"x": [1, 3, 320, 320]})
    report["groups_prunable"], report["macs_coverage"]["fraction"]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import onnx
from pydantic import Field

from onnxopt.errors import ConfigError
from onnxopt.passes.base import Choice, Pass, PassConfig, PassContext, Range, StrList, register
from onnxopt.passes.prune.activations import Calibration
from onnxopt.passes.prune.analyze import Result, analyze, coverage
from onnxopt.passes.prune.apply import cut, estimate_macs, guard, kept_channels, kept_outputs
from onnxopt.passes.prune.importance import class_scores, resolve_criterion
from onnxopt.passes.prune.ratios import Budget, auto_rounding, choose
from onnxopt.passes.prune.shift import apply_shifts, mean_shifts


class PruneConfig(PassConfig):
    """Options of ``prune``; ``calib_samples`` is the old name of ``calib_size`` (still accepted)."""

    aliases = {"calib_samples": "calib_size"}

    ratio: float = Field(0.3, ge=0.0, lt=1.0)
    # sensitivity: measure each group pruned alone (needs --calib) and spend the ratio / target_macs
    # where it costs least; the slowest strategy, and the one that keeps outputs closest
    strategy: Literal["uniform", "global", "sensitivity"] = "uniform"
    # activation: mean |x| on calibration data; variance: Var(x) * |consumer column|^2 (what a cut costs
    # once its mean moved into the bias); both need --calib. auto: variance with --calib, else l2
    criterion: Literal["auto", "l1", "l2", "bn_scale", "activation", "variance"] = "auto"
    aggregate: Literal["sum", "mean", "max"] = "mean"
    # None: the target's channel block (8 unless the profile says otherwise) on groups of >= 8 blocks
    round_to: int | None = Field(None, ge=1)
    min_channels: int = Field(1, ge=1)
    overrides: StrList = ()
    ignore: StrList = ()
    target_macs: float | None = Field(None, gt=0.0, lt=1.0)
    recover: Literal["auto", "lstsq", "bias", "none"] = "auto"
    # pruned: fit each layer on its input in the re-fitted model (one run per layer, best fidelity);
    # original: fit on the unpruned model's kept channels (one run per chunk of layers, much faster)
    refit_inputs: Literal["pruned", "original"] = "pruned"
    # cut: re-fit the consumers of cut channels; downstream: also every conv/Gemm after them (depthwise
    # and grouped convs too), so the error that reaches a layer is corrected there (slower, closer)
    refit_layers: Literal["cut", "downstream"] = "cut"
    calib_size: int = Field(32, ge=1)  # calibration samples scored and re-fitted on (the first ones)


def prune_model(model: onnx.ModelProto, cfg: PruneConfig, shapes: Mapping[str, Sequence[int]] | None = None,
                data: object = None, *, seed: int = 0, profile: object = None) -> tuple[onnx.ModelProto, dict]:
    """Prune ``model`` as ``cfg`` says, on the first ``cfg.calib_size`` samples of ``data`` (a ``Dataset``
    or None); ``profile`` supplies the channel block when ``round_to`` is unset, ``seed`` the re-fit's.
    Returns the new model (the input itself when nothing is removed) and a report."""
    if data is not None:
        data = data.take(min(cfg.calib_size, len(data)))
    mode = cfg.recover if cfg.recover != "auto" else ("lstsq" if data is not None else "none")
    if mode != "none" and data is None:
        raise ConfigError(f"recover={mode} needs calibration data", "pass calibration data, or recover=none")
    calib = Calibration.of(data)
    result = analyze(model, shapes)
    criterion = resolve_criterion(cfg.criterion, data)
    scores = class_scores(result, criterion, cfg.aggregate, calib)
    removed = select(result, scores, cfg, auto_rounding(cfg.round_to, profile), model, shapes, calib)
    report = describe(result, removed)
    report["criterion"] = criterion
    if result.allocation:
        report["allocation"] = result.allocation
    if not removed:
        return model, report
    kept = kept_outputs(result, removed)
    kept_in = kept_channels(result, removed) if cfg.refit_inputs == "original" else None
    shifts = mean_shifts(result, removed, calib.stats(result)) if mode != "none" else {}
    pruned = cut(result, removed, like=model)
    if mode != "none":
        pruned, report["recovery"] = _recover(model, pruned, calib.data, kept, shifts, mode, cfg, seed, kept_in)
    return pruned, report


def select(result: Result, scores: dict[int, float], cfg: PruneConfig, rounding: tuple[int, int],
           model: onnx.ModelProto | None = None, shapes=None, calib=None) -> set[int]:
    """Classes to remove for a ratio, or, with ``target_macs``, the smallest ratio reaching it;
    ``strategy=sensitivity`` measures each group's curve on ``calib`` and spends the budget there.
    ``rounding`` is ``(round_to, round_from)`` from :func:`ratios.auto_rounding`."""
    round_to, round_from = rounding

    def budget(ratio: float) -> Budget:
        return Budget(ratio, cfg.strategy, round_to, cfg.min_channels, tuple(cfg.overrides), tuple(cfg.ignore),
                      round_from)

    if cfg.strategy == "sensitivity":
        from onnxopt.passes.prune.sensitivity import allocate

        removed, trail = allocate(result, scores, budget(cfg.ratio), model, shapes, calib, cfg.target_macs,
                                  refit=cfg.recover in ("auto", "lstsq"))
        result.allocation = trail
        return removed

    def for_ratio(ratio: float) -> set[int]:
        return guard(result, choose(result.groups, scores, budget(ratio)))

    if cfg.target_macs is None:
        return for_ratio(cfg.ratio) if cfg.ratio > 0 or cfg.overrides else set()
    total = sum(result.node_macs.values()) or 1
    low, high, best = 0.0, 0.95, for_ratio(0.95)
    for _ in range(12):  # bisection on the ratio; MACs fall monotonically with it
        mid = (low + high) / 2
        removed = for_ratio(mid)
        if 1 - estimate_macs(result, removed) / total >= cfg.target_macs:
            high, best = mid, removed
        else:
            low = mid
    return best


def _recover(model, pruned, data, kept, shifts, mode: str, cfg: PruneConfig, seed: int,
             kept_in=None) -> tuple[onnx.ModelProto, dict]:
    """Move the mean shift into the biases, then (lstsq) re-fit; ship whichever of cut, shifted and
    re-fitted is closest to the unpruned model on the calibration data, and report all three."""
    from onnxopt.passes.prune.recover import output_cosine, recover, reference_outputs

    shifted, moved = apply_shifts(pruned, shifts, kept)
    info: dict = {"mode": mode, "samples": len(data), "layers": moved, "mean_shift_layers": moved}
    candidates = {"none": pruned, "bias": shifted}
    if mode == "lstsq":
        candidates["lstsq"], fitted = recover(model, shifted, data, kept, seed=seed, kept_in=kept_in,
                                              downstream=cfg.refit_layers == "downstream")
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


@register
class Prune(Pass):
    """Remove whole channels (and MLP neurons) in coupled groups; graph outputs keep their shapes.

    Example: ``prune:ratio=0.3,round_to=8,criterion=bn_scale``; ``prune:target_macs=0.5``;
    ``prune:ratio=0.3,overrides=stage4*=0.5|head*=0``.
    """

    name = "prune"
    Config = PruneConfig
    tunable = {
        "ratio": Range(0.0, 0.7),
        "round_to": Choice((1, 4, 8, 16)),
        "criterion": Choice(("auto", "l1", "l2", "bn_scale")),  # auto: variance when the tuner has data
        # sensitivity measures each group pruned alone on the calibration data: slow, most accurate
        "strategy": Choice(("uniform", "global", "sensitivity")),
    }

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        pruned, report = prune_model(model, self.config, ctx.shapes, ctx.data, seed=ctx.seed,  # type: ignore[arg-type]
                                     profile=ctx.profile)
        ctx.details.update(report)
        _notes(ctx, report)
        return pruned


def _notes(ctx: PassContext, report: dict) -> None:
    """The report's sentences for people: coverage, what the sensitivity strategy cut, recovery."""
    cov = report["macs_coverage"]
    ctx.note(f"{report['groups_prunable']}/{report['groups_total']} channel groups prunable, holding "
             f"{cov['fraction']:.0%} of the MACs; removed {report['channels_removed']} channel(s), "
             f"estimated MACs -{report['macs_estimate_drop']:.0%}")
    if report.get("allocation"):
        cut_groups = [a for a in report["allocation"] if a["ratio"] > 0]
        listed = ", ".join(f"{a['producers'][0]}={a['ratio']}" for a in cut_groups[:8]) + (
            " ..." if len(cut_groups) > 8 else "")
        ctx.note(f"strategy=sensitivity ({report['criterion']}): each of {len(report['allocation'])} groups "
                 f"measured alone; {len(cut_groups)} cut: {listed}")
    for reason, count in list(report["unprunable_reasons"].items())[:3]:
        ctx.note(f"{count} group(s) kept whole: {reason}")
    rec = report.get("recovery")
    if rec and rec.get("layers"):
        ctx.note(f"recovery ({rec['mode']}): re-fitted {rec['layers']} layer(s) on {rec['samples']} sample(s); "
                 f"output cosine {rec['cosine_without']:.4f} -> {rec['cosine_with']:.4f} on that data")
