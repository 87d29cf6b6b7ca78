"""Pruning benchmark: per corpus model and ratio, the MACs and params drop, the latency ratio vs the
unpruned model (onnxopt's profiler, A/B interleaved in one child process, median with its 95% CI),
and fidelity without and with least-squares recovery; prints one markdown table (README, Pruning).

    .venv/bin/python benchmarks/pruning.py                      # the README table
    .venv/bin/python benchmarks/pruning.py --models digits --ratios 0.3 --json out.json
    .venv/bin/python benchmarks/pruning.py --models light_resnet50 --ratios 0.3 --round-to 1,8,16 --repeats 3

Each ``--round-to`` value is one variant of the pruned model; all variants of a (model, ratio) are
timed in one interleaved run against the unpruned model, ``--repeats`` times (the spread across
repeats is printed next to each run's own CI: on a shared machine it is the wider of the two).

Data (calibration and scoring never share samples): digits fits on its first 150 evaluation
samples and scores accuracy on the other 300; PP-OCR det/cls on generated text pages/lines
(tests/corpus_data.py; seed 0 to fit, seed 1 to score); the light zoo models, whose weights are
deterministic but untrained, on synthetic inputs (weaker evidence).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/corpus_data.py, the text-page generator shared with the tests

from onnxopt.data import Dataset, load_data  # noqa: E402
from onnxopt.evaluate import fidelity  # noqa: E402
from onnxopt.model import fix_input_shapes  # noqa: E402
from onnxopt.passes.prune.prune import PruneConfig, prune_model  # noqa: E402
from onnxopt.profiling.ab import measure_ab  # noqa: E402
from onnxopt.profiling.measure import Item  # noqa: E402
from onnxopt.profiling.profiles import get_profile  # noqa: E402
from onnxopt.stats import model_stats  # noqa: E402
from onnxopt.zoo import corpus  # noqa: E402
from tests.corpus_data import cls_inputs, det_inputs  # noqa: E402

SHAPES = {"ppocr_det": {"x": [1, 3, 320, 320]}, "ppocr_cls": {"x": [1, 3, 48, 192]}}
DEFAULT = ["digits", "ppocr_cls", "ppocr_det", "light_resnet50", "light_squeezenet"]
CALIB = 8  # samples to fit recovery on (digits: its 150-sample calibration split)


def data_for(name: str, model) -> tuple[Dataset, Dataset]:
    """(calibration, scoring) data; disjoint samples."""
    if name == "digits":
        arrays = np.load(ROOT / "models" / "digits_eval.npz")
        x, y = arrays["input"].astype(np.float32), arrays["labels"]
        return Dataset({"input": x[:150]}, y[:150], "calib"), Dataset({"input": x[150:]}, y[150:], "held out")
    if name == "ppocr_det":
        return Dataset({"x": det_inputs(CALIB, seed=0)}), Dataset({"x": det_inputs(8, seed=1)})
    if name == "ppocr_cls":
        return Dataset({"x": cls_inputs(CALIB, seed=0)}), Dataset({"x": cls_inputs(16, seed=1)})
    shapes = SHAPES.get(name)
    return (load_data(f"synthetic:n={CALIB},seed=0", model, shapes=shapes),
            load_data("synthetic:n=8,seed=1", model, shapes=shapes))


def _score(model, candidate, held_out: Dataset) -> str:
    fid = fidelity(model, candidate, held_out)
    text = f"cos {fid.outputs[0].cosine_mean:.3f}"
    if fid.accuracy_candidate is not None:
        text += f", acc {fid.accuracy_candidate:.2%} (fp32 {fid.accuracy_reference:.2%})"
    return text


def latency(model, variants: dict[str, object], feed: dict[str, np.ndarray], profile: str, repeats: int) -> dict:
    """Per variant: pruned/unpruned latency, measured interleaved with the unpruned model and every
    other variant by the profiler, ``repeats`` times: median ratio [95% CI] of each run, and the range."""
    items = [Item("unpruned", model, [feed])] + [Item(k, v, [feed]) for k, v in variants.items()]
    runs: dict[str, list] = {k: [] for k in variants}
    base = []
    for _ in range(repeats):
        results, ratios = measure_ab(items, get_profile(profile))
        if not ratios:
            return {k: "failed: " + "; ".join(r.error or "" for r in results if not r.ok) for k in variants}
        base.append(results[0].latency_ms.median)
        for r in ratios:
            runs[r.model].append(r)
    out = {}
    for key, rs in runs.items():
        each = ", ".join(f"{r.ratio:.2f} [{r.ci_low:.2f}-{r.ci_high:.2f}]" for r in rs)
        meds = sorted(r.ratio for r in rs)
        out[key] = (f"{meds[len(meds) // 2]:.2f} ({1 / meds[len(meds) // 2]:.2f}x faster; runs: {each}; "
                    f"unpruned {min(base):.0f}-{max(base):.0f} ms)")
    return out


def bench(name: str, ratio: float, args: argparse.Namespace) -> list[dict]:
    model = corpus()[name]()
    shapes = SHAPES.get(name)
    if shapes:  # fixed input dims: the profiler and ORT's shape-dependent optimizations see one shape
        model = fix_input_shapes(model, shapes)
    calib, held_out = data_for(name, model)
    rows, variants = [], {}
    for round_to in (int(r) for r in args.round_to.split(",")):
        row: dict = {"model": name, "ratio": ratio, "round_to": round_to}
        pruned = {}
        for mode in ("none", "lstsq"):
            cfg = PruneConfig(ratio=ratio, criterion=args.criterion, recover=mode, refit_inputs=args.refit_inputs,
                              round_to=round_to, refit_layers=args.refit_layers, strategy=args.strategy,
                              calib_size=len(calib))  # every calibration sample, as before PruneConfig
            pruned[mode], report = prune_model(model, cfg, shapes, calib)
            row[f"fidelity_{mode}"] = _score(model, pruned[mode], held_out)
        before, after = model_stats(model, shapes), model_stats(pruned["lstsq"], shapes)
        row.update(macs_drop=1 - after.macs_known / before.macs_known, params_drop=1 - after.params / before.params,
                   groups=f"{report['groups_prunable']}/{report['groups_total']}",
                   coverage=report["macs_coverage"]["fraction"], recovery=report.get("recovery"))
        variants[f"round_to={round_to}"] = pruned["lstsq"]
        rows.append(row)
    feed = {k: v[:1] for k, v in held_out.inputs.items()}
    timed = latency(model, variants, feed, args.profile, args.repeats)
    for row in rows:
        row["latency"] = timed[f"round_to={row['round_to']}"]
    return rows


def table(rows: list[dict], profile: str) -> str:
    lines = [f"| model | ratio | round_to | MACs drop | params drop | latency pruned/unpruned ({profile}) | "
             "fidelity, no recovery | fidelity, lstsq recovery |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ratio']} | {r['round_to']} | {r['macs_drop']:.1%} | "
                     f"{r['params_drop']:.1%} | "
                     f"{r['latency']} | {r['fidelity_none']} | {r['fidelity_lstsq']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT), help="comma list, or 'all'")
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--criterion", default="auto")
    parser.add_argument("--strategy", default="uniform", choices=["uniform", "global", "sensitivity"])
    parser.add_argument("--profile", default="cpu-1t")
    parser.add_argument("--refit-inputs", default="pruned", choices=["pruned", "original"])
    parser.add_argument("--refit-layers", default="cut", choices=["cut", "downstream"])
    parser.add_argument("--round-to", default="1,8", help="comma list: one pruned variant per value")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved latency runs per model and ratio")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    names = list(corpus()) if args.models == "all" else args.models.split(",")
    rows = []
    for name in names:
        for ratio in (float(r) for r in args.ratios.split(",")):
            for row in bench(name, ratio, args):
                rows.append(row)
                print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    print(f"criterion {args.criterion}, strategy {args.strategy}\n")
    print(table(rows, args.profile))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
