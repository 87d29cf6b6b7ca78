"""``prune``: structured channel pruning; the config, the tuner's search space and the report notes.

Example: ``onnxopt optimize m.onnx -o p.onnx --passes "simplify,prune:ratio=0.3,round_to=8" --calib d.npz``.
"""

from __future__ import annotations

from typing import Literal

import onnx
from pydantic import Field

from onnxopt.passes.base import Choice, Pass, PassConfig, PassContext, Range, StrList, register


class PruneConfig(PassConfig):
    ratio: float = Field(0.3, ge=0.0, lt=1.0)
    # sensitivity: measure each group pruned alone (needs --calib) and spend the ratio / target_macs
    # where it costs least; slow (a few minutes on a detector), best fidelity
    strategy: Literal["uniform", "global", "sensitivity"] = "uniform"
    # activation: mean |x| on calibration data; variance: Var(x) * |consumer column|^2 (what a cut costs
    # once its mean moved into the bias); both need --calib. auto: variance with --calib, else l2
    # (variance was best on every corpus model measured: README, Pruning)
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
    calib_samples: int = Field(32, ge=1)


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
        "strategy": Choice(("uniform", "global")),
    }

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        from onnxopt.passes.prune.pruner import PruneOptions, prune_model
        from onnxopt.passes.prune.ratios import auto_rounding

        cfg: PruneConfig = self.config  # type: ignore[assignment]
        data = ctx.data.take(min(cfg.calib_samples, len(ctx.data))) if ctx.data is not None else None
        round_to, round_from = auto_rounding(cfg.round_to, ctx.profile)
        opts = PruneOptions(cfg.ratio, cfg.strategy, cfg.criterion, cfg.aggregate, round_to, cfg.min_channels,
                            tuple(cfg.overrides), tuple(cfg.ignore), cfg.target_macs, cfg.recover, ctx.seed,
                            cfg.refit_inputs, round_from, cfg.refit_layers)
        pruned, report = prune_model(model, opts, ctx.shapes, data)
        ctx.details.update(report)
        cov = report["macs_coverage"]
        ctx.note(f"{report['groups_prunable']}/{report['groups_total']} channel groups prunable, holding "
                 f"{cov['fraction']:.0%} of the MACs; removed {report['channels_removed']} channel(s), "
                 f"estimated MACs -{report['macs_estimate_drop']:.0%}")
        if report.get("allocation"):
            cut = [a for a in report["allocation"] if a["ratio"] > 0]
            listed = ", ".join(f"{a['producers'][0]}={a['ratio']}" for a in cut[:8]) + (" ..." if len(cut) > 8 else "")
            ctx.note(f"strategy=sensitivity ({report['criterion']}): each of {len(report['allocation'])} groups "
                     f"measured alone; {len(cut)} cut: {listed}")
        for reason, count in list(report["unprunable_reasons"].items())[:3]:
            ctx.note(f"{count} group(s) kept whole: {reason}")
        rec = report.get("recovery")
        if rec and rec.get("layers"):
            ctx.note(f"recovery ({rec['mode']}): re-fitted {rec['layers']} layer(s) on {len(data)} sample(s); "
                     f"output cosine {rec['cosine_without']:.4f} -> {rec['cosine_with']:.4f} on that data")
        return pruned
