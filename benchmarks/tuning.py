"""The tuner against fp32 and each single technique, side by side in one interleaved run; and how
many trials each search strategy needs on a space small enough to enumerate.

    .venv/bin/python benchmarks/tuning.py [model ...]        (default: digits ppocr_cls ppocr_det light_resnet50)
    .venv/bin/python benchmarks/tuning.py --quick            (smoke run: digits, tiny budgets, 1 replay seed)
    .venv/bin/python benchmarks/tuning.py ppocr_det --budget ppocr_det=6 --time ppocr_det=10m --no-strategies

Part 1, per model on the ``cpu-1t`` profile: ``onnxopt.tune()`` (strategy ngopt, seed 0, the whole
default space) with the budget and time cap printed, then one interleaved run of the profiler
(``measure_with_times``, variants round-robin in one measurement child until the profile's
protocol is met) over: fp32 (the input), the tuned model with its session settings, latency-aware
int8 alone (``simplify,quantize:mode=static,latency_aware=true``), sensitivity pruning alone
(``simplify,prune:strategy=sensitivity,target_macs=0.5,round_to=8``) and plain onnxruntime
``quantize_static`` with its defaults (no pre-processing). Ratios are medians of per-round
latency ratios with their 95% interval (``onnxopt.profiling.results.ratio``), printed as speed-ups
(fp32 time / variant time). fp32 is measured twice (an A/A pair: two sessions of one model land a
few % apart, the first item of a round often slower), every speed-up is printed against both
copies, and the goals read the less favourable of the two. Accuracy is measured on held-out data
the tuner never saw. "Best single technique" is the faster of latency-aware int8 and sensitivity
pruning among those that meet the target on the held-out data (the faster of both if neither does).

Data (three disjoint sets per model: calibration, the tuner's accuracy checks, held out):
digits calibrates on samples 0-74 of models/digits_eval.npz, the tuner judges on 75-149, held-out
top-1 on 150-449 (300, as in the other benchmarks); PP-OCR cls on rendered text lines of
tests/corpus_data.py (16 of seed 0 / 16 of seed 2 / 32 of seed 1), PP-OCRv4 det (1x3x320x320) on
rendered text pages (8 of seed 0 / 4 of seed 2 / 8 of seed 1; IoU is the text-mask IoU at 0.3);
light ResNet-50 (deterministic random weights) on synthetic inputs (8 of seed 0 / 8 of seed 2 / 8
of seed 1: fidelity only, a worst case).

Part 2 (``--grid-model``, default digits): a recipe fixes most of the space, leaving 54 distinct
points (precision x latency-aware x per-channel x int8 scheme x uniform pruning on/off x graph
optimization level). ``strategy="grid"`` builds and measures every point with the real profiler;
then every strategy is run for each seed on a REPLAY of that grid: the builds and accuracy scores
are the grid's, and a meter looks up each point's latency ratio measured by the grid (no new
measurement). The count is the number of trials until one meets the target within 5% of the grid
optimum's ratio (seeds included), and among the strategy's own asks after the seeds; the median
over the seeds is printed. Each replayed search is capped in time (``--replay-cap``, default 60 s:
nevergrad's BO spends seconds per ask, and a discrete space makes it re-ask known points).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/corpus_data.py, the text-page generator shared with the tests

import onnxopt  # noqa: E402
from onnxopt.data import Dataset, load_data  # noqa: E402
from onnxopt.model import fix_input_shapes  # noqa: E402
from onnxopt.passes.quant.prepare import negative_dims_to_symbolic  # noqa: E402
from onnxopt.profiling import get_profile  # noqa: E402
from onnxopt.profiling.measure import Item, measure_with_times  # noqa: E402
from onnxopt.profiling.results import ratio  # noqa: E402
from onnxopt.runtime import run  # noqa: E402
from onnxopt.targets import Judge, mask_iou, parse_target  # noqa: E402
from onnxopt.tuning.meter import Latency, feeds_for  # noqa: E402
from onnxopt.tuning.space import build_space  # noqa: E402
from onnxopt.zoo import corpus  # noqa: E402
from tests.corpus_data import cls_inputs, det_inputs  # noqa: E402

PROFILE = "cpu-1t"
DEFAULT = ["digits", "ppocr_cls", "ppocr_det", "light_resnet50"]
SHAPES = {"ppocr_det": {"x": [1, 3, 320, 320]}, "ppocr_cls": {"x": [1, 3, 48, 192]}}
TARGETS = {"digits": "drop<=0.005", "ppocr_cls": "top1>=0.99", "ppocr_det": "iou>=0.97",
           "light_resnet50": "cosine>=0.99", "mobilenet_digits": "drop<=0.01"}
# trials and time cap per model (det and ResNet-50 build for minutes per quantization on 2 cores)
BUDGETS = {"digits": (30, "8m"), "ppocr_cls": (16, "8m"), "ppocr_det": (8, "12m"), "light_resnet50": (6, "8m"),
           "mobilenet_digits": (20, "8m")}
QUICK_BUDGETS = {"digits": (5, "3m"), "ppocr_cls": (3, "3m"), "ppocr_det": (2, "5m"), "light_resnet50": (2, "5m"),
                 "mobilenet_digits": (3, "3m")}
INT8_ALONE = "simplify,quantize:mode=static,latency_aware=true"
PRUNE_ALONE = "simplify,prune:strategy=sensitivity,target_macs=0.5,round_to=8"
SINGLES = ("latency-aware int8", "sensitivity prune")
STRATEGIES = ("ngopt", "random", "bo", "cma", "de", "portfolio")
GRID_RECIPE = {
    "fix": {"simplify.enabled": True, "simplify.ort": True, "prune.ratio": 0.5, "prune.round_to": 8,
            "prune.criterion": "auto", "prune.strategy": "uniform", "quantize.mode": "static",
            "quantize.method": "minmax", "quantize.rounding": "nearest", "session.enable_mem_pattern": True,
            "session.enable_cpu_mem_arena": True},
    "values": {"prune.enabled": [False, True], "precision": ["fp32", "int8"], "quantize.latency_aware": [False, True],
               "quantize.per_channel": [True, False], "quantize.scheme": ["qdq-u8s8", "qoperator-u8s8"],
               "session.graph_optimization_level": ["all", "extended", "basic"]},
}
AA = "fp32 again (A/A)"  # the input a second time: how far two sessions of one model land apart
WITHIN = 0.05  # "within 5% of the grid optimum": ratio <= optimum * 1.05


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    calib: Dataset
    tune_eval: Dataset
    held_out: Dataset
    target: str
    shapes: dict | None


def case(name: str) -> Case:
    if name == "mobilenet_digits":  # the repo's own demo model (models/train_mobilenet.py), same splits as digits
        arrays = np.load(ROOT / "models" / "mobilenet_digits_eval.npz")
        x, y = arrays["input"].astype(np.float32), arrays["labels"]
        parts = [Dataset({"input": x[a:b]}, y[a:b], f"mobilenet_digits_eval[{a}:{b}]")
                 for a, b in ((0, 75), (75, 150), (150, 450))]
        return Case(name, onnx.load(ROOT / "models" / "mobilenet_digits.onnx"), *parts, TARGETS[name], None)
    model = corpus()[name]()
    shapes = SHAPES.get(name)
    if name == "ppocr_cls":
        negative_dims_to_symbolic(model)
    if shapes:
        model = fix_input_shapes(model, shapes)
    target = TARGETS[name]
    if name == "digits":
        arrays = np.load(ROOT / "models" / "digits_eval.npz")
        x, y = arrays["input"].astype(np.float32), arrays["labels"]
        parts = [Dataset({"input": x[a:b]}, y[a:b], f"digits_eval[{a}:{b}]") for a, b in ((0, 75), (75, 150),
                                                                                          (150, 450))]
        return Case(name, model, *parts, target, shapes)
    if name == "ppocr_cls":
        return Case(name, model, Dataset({"x": cls_inputs(16)}, None, "lines seed 0"),
                    Dataset({"x": cls_inputs(16, seed=2)}, None, "lines seed 2"),
                    Dataset({"x": cls_inputs(32, seed=1)}, None, "lines seed 1"), target, shapes)
    if name == "ppocr_det":
        return Case(name, model, Dataset({"x": det_inputs(8)}, None, "pages seed 0"),
                    Dataset({"x": det_inputs(4, seed=2)}, None, "pages seed 2"),
                    Dataset({"x": det_inputs(8, seed=1)}, None, "pages seed 1"), target, shapes)
    return Case(name, model, *(load_data(f"synthetic:n=8,seed={s}", model, shapes=shapes) for s in (0, 2, 1)),
                target, shapes)


def load() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------- part 1: tuned vs the single techniques


def ort_quantize_static(model: onnx.ModelProto, calib: Dataset) -> onnx.ModelProto:
    """onnxruntime's ``quantize_static`` with every default (QDQ, u8/s8, per-tensor, MinMax), no pre-process."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(calib)
            self.rows = iter([{k: v[i:i + 1] for k, v in calib.inputs.items()} for i in range(n)])

        def get_next(self):
            return next(self.rows, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(dst), Reader())
        return onnx.load(str(dst))


def held_out_scores(c: Case, candidate: onnx.ModelProto) -> dict:
    judge = Judge(c.model, c.held_out, parse_target(c.target))
    scores = dict(judge.score(candidate))
    scores["meets"] = judge.holds(scores)
    if c.name == "ppocr_det" and scores.get("iou") is None:
        scores["iou"] = mask_iou(next(iter(judge.reference.values())), next(iter(run(candidate, c.held_out).values())))
    if c.held_out.labels is not None:
        out = next(iter(run(candidate, c.held_out).values()))
        scores["top1_acc"] = float(np.mean(np.asarray(out).reshape(len(c.held_out), -1).argmax(1) == c.held_out.labels))
    return scores


def speedup(r) -> str:
    """fp32-time / variant-time from a time ratio (variant / reference) with its interval inverted."""
    return f"{1 / r.ratio:.2f}x [{1 / r.ci_high:.2f}-{1 / r.ci_low:.2f}]"


def bench_model(name: str, args) -> dict:
    c = case(name)
    budget, time_cap = (QUICK_BUDGETS if args.quick else BUDGETS)[name]
    budget = int(args.budget.get(name, budget))
    time_cap = args.time.get(name, time_cap)
    print(f"\n## {name}: tune budget {budget} trials, time cap {time_cap}, target {c.target}, {load()}", flush=True)
    start = time.perf_counter()
    events = []

    def on_event(kind, data):
        if kind == "trial":
            t = data["trial"]
            lat = t.latency
            text = f"{lat.ratio:.3f} [{lat.ci_low:.3f}-{lat.ci_high:.3f}]" if lat and lat.ratio else "-"
            events.append(t.seq)
            print(f"#  trial {t.seq} {t.origin} {t.status} ratio {text} {t.spec[:150]} {t.session or ''} "
                  f"{t.reason or ''}", flush=True)

    result = onnxopt.tune(c.model, profile=PROFILE, calib=c.calib, data=c.tune_eval, target=c.target, budget=budget,
                          time_limit=time_cap, strategy="ngopt", seed=0, shapes=c.shapes, on_event=on_event,
                          out_dir=Path(args.out) / name)
    tune_s = time.perf_counter() - start
    summary = result.summary
    print(f"# tuned in {tune_s:.0f} s: {summary.get('trials')} trials ({summary.get('ok')} ok, "
          f"{summary.get('violates')} violate, {summary.get('failed')} failed); {summary.get('decision')}", flush=True)

    variants: dict[str, tuple[onnx.ModelProto, dict]] = {"fp32": (c.model, {}), AA: (c.model, {})}
    variants["tuned"] = (result.model, dict(result.best.session) if result.best else {})
    build_s = {}
    for label, spec in (("latency-aware int8", INT8_ALONE), ("sensitivity prune", PRUNE_ALONE)):
        t0 = time.perf_counter()
        try:
            built = onnxopt.optimize(c.model, spec, calib=c.calib, shapes=c.shapes, profile=PROFILE, fidelity=False)
            variants[label] = (built.model, {})
        except Exception as exc:  # a technique that refuses is reported, the comparison goes on
            print(f"# {label} failed: {type(exc).__name__}: {exc}", flush=True)
        build_s[label] = time.perf_counter() - t0
    t0 = time.perf_counter()
    variants["ort quantize_static"] = (ort_quantize_static(c.model, c.calib), {})
    build_s["ort quantize_static"] = time.perf_counter() - t0
    print(f"# single techniques built in {', '.join(f'{k} {v:.0f} s' for k, v in build_s.items())}; {load()}",
          flush=True)

    prof = get_profile(PROFILE)
    feeds = feeds_for(c.model, c.held_out, prof.inputs.samples)
    items = [Item(label, m, feeds, synthetic=False,
                  session=prof.session.model_copy(update=session) if session else None)
             for label, (m, session) in variants.items()]
    results, times = measure_with_times(items, prof)
    failed = [f"{r.model}: {r.error}" for r in results if not r.ok]
    if failed:
        raise SystemExit(f"timing failed: {failed}")
    times_of = dict(zip(variants, times, strict=True))
    rows = []
    for (label, (m, session)), res in zip(variants.items(), results, strict=True):
        scores = held_out_scores(c, m)
        vs_fp32 = ratio(label, "fp32", np.asarray(times_of[label]), np.asarray(times_of["fp32"]))
        vs_aa = ratio(label, AA, np.asarray(times_of[label]), np.asarray(times_of[AA]))
        # the goals read the slower of the two fp32 copies' verdicts (conservative)
        worse = max(vs_fp32, vs_aa, key=lambda r: r.ratio)
        rows.append({"model": name, "variant": label, "median_ms": res.latency_ms.median,
                     "rounds": len(times_of[label]), "ratio": worse.ratio, "ci_low": worse.ci_low,
                     "ci_high": worse.ci_high, "speedup": speedup(vs_fp32), "speedup_aa": speedup(vs_aa),
                     "vs_fp32": {"ratio": vs_fp32.ratio, "ci_low": vs_fp32.ci_low, "ci_high": vs_fp32.ci_high},
                     "size_kib": m.ByteSize() / 1024,
                     "session": session, **{k: v for k, v in scores.items() if v is not None}})
    by = {r["variant"]: r for r in rows}
    aa = by[AA]["vs_fp32"]  # the A/A pair: the second fp32 session against the first
    noise = max(0.01, 1.0 - aa["ci_low"], aa["ci_high"] - 1.0)
    # the best single technique: the faster of those that meet the target on held-out data (a model
    # that breaks the target is no alternative); if neither does, the faster of the two
    singles = [s for s in SINGLES if s in by]
    meeting = [s for s in singles if by[s]["meets"]]
    best_single = min(meeting or singles, key=lambda s: by[s]["ratio"]) if singles else None
    extra = {}
    for other in ([best_single] if best_single else []) + ["ort quantize_static"]:
        r = ratio("tuned", other, np.asarray(times_of["tuned"]), np.asarray(times_of[other]))
        extra[other] = {"ratio": r.ratio, "ci_low": r.ci_low, "ci_high": r.ci_high, "speedup": speedup(r)}
    out = {"model": name, "target": c.target, "noise": noise, "budget": budget, "time_cap": time_cap, "tune_s": tune_s,
           "summary": {k: v for k, v in summary.items() if k != "settings_worth"},
           "best_spec": result.best.spec if result.best else "(input)", "rows": rows, "best_single": best_single,
           "tuned_vs": extra, "load_after": load()}
    print(render_model(out), flush=True)
    return out


def _acc_text(row: dict) -> str:
    parts = []
    if "top1_acc" in row:
        parts.append(f"top-1 {row['top1_acc']:.2%}")
    if row.get("iou") is not None:
        parts.append(f"IoU {row['iou']:.3f}")
    if row.get("top1") is not None and "top1_acc" not in row:
        parts.append(f"agree {row['top1']:.3f}")
    parts.append(f"cos {row['cosine']:.4f}")
    return ", ".join(parts) + ("" if row["meets"] else " (misses target)")


def render_model(out: dict) -> str:
    lines = [f"\n{out['model']} (target {out['target']}; tuned: {out['best_spec']}; A/A noise {out['noise']:.1%}; "
             f"budget {out['budget']} trials, cap {out['time_cap']}, tuned in {out['tune_s']:.0f} s)",
             "| model | variant | speed-up vs fp32 [95% CI] | vs fp32's A/A copy | median ms | size KiB | "
             "held-out accuracy |", "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['model']} | {r['variant']}{' ' + json.dumps(r['session']) if r['session'] else ''} | "
                     f"{r['speedup']} | {r['speedup_aa']} | {r['median_ms']:.3f} | {r['size_kib']:.0f} | "
                     f"{_acc_text(r)} |")
    for other, r in out["tuned_vs"].items():
        role = " (best single technique)" if other == out["best_single"] else ""
        lines.append(f"tuned vs {other}{role}: {r['speedup']} (its time / tuned time)")
    return "\n".join(lines)


def goals(models: list[dict]) -> list[str]:
    lines = []
    by = {m["model"]: {r["variant"]: r for r in m["rows"]} for m in models}
    noise = {m["model"]: m["noise"] for m in models}
    slower = [n for n, rows in by.items() if rows["tuned"]["ci_low"] > 1.0 + noise[n]]
    lines.append(f"- never slower than fp32 (tuned/fp32 interval not wholly above 1 + the A/A noise) on "
                 f"{', '.join(by)}: "
                 f"{'MET' if not slower else 'NOT MET (' + ', '.join(slower) + ')'}; tuned speed-ups "
                 + "; ".join(f"{n} {rows['tuned']['speedup']}" for n, rows in by.items()))
    if "ppocr_det" in by:
        t = by["ppocr_det"]["tuned"]
        ok = 1 / t["ratio"] >= 2.0 and t.get("iou", 0) >= 0.97
        lines.append(f"- det >= 2.0x at held-out IoU >= 0.97: {'MET' if ok else 'NOT MET'} "
                     f"({t['speedup']}, vs the A/A copy {t['speedup_aa']}, IoU {t.get('iou', float('nan')):.3f})")
    if "digits" in by:
        t, f = by["digits"]["tuned"], by["digits"]["fp32"]
        drop = f["top1_acc"] - t["top1_acc"]
        ok = 1 / t["ratio"] >= 2.0 and drop <= 0.005
        lines.append(f"- digits >= 2x at top-1 within 0.5 points: {'MET' if ok else 'NOT MET'} "
                     f"({t['speedup']}, vs the A/A copy {t['speedup_aa']}, top-1 {t['top1_acc']:.2%} vs fp32 "
                     f"{f['top1_acc']:.2%})")
    beyond = []
    for m in models:
        if m["best_single"]:
            r = m["tuned_vs"][m["best_single"]]
            beyond.append((m["model"], m["best_single"], r, 1 / r["ratio"] >= 1.3))
    n_ok = sum(b[3] for b in beyond)
    lines.append(f"- >= 1.3x beyond the best single technique on >= 2 models: {'MET' if n_ok >= 2 else 'NOT MET'} "
                 f"({n_ok} of {len(beyond)}: " + "; ".join(f"{n} vs {s} {r['speedup']}" for n, s, r, _ in beyond)
                 + ")")
    return lines


# ---------------------------------------------------------------- part 2: strategies on a replayed grid


class ReplayExecutor(cf.Executor):
    """Hands back the grid's build result for a pipeline (builds do not depend on session settings);
    the model bytes carry their pipeline spec so the meter can find the grid's measurement."""

    def __init__(self, builds: dict[str, dict]):
        self.builds = builds

    def submit(self, fn, payload, job):  # noqa: ARG002 - the signature the tuner calls
        future: cf.Future = cf.Future()
        future.set_result(dict(self.builds[job["spec"]]))
        return future


class ReplayMeter:
    """Looks up the latency ratio the grid measured for (pipeline, session settings): no measuring."""

    def __init__(self, latencies: dict[tuple[str, str], Latency]):
        self.latencies = latencies

    def __call__(self, items):
        out = [Latency(items[0][0], True, None, 1.0, 1.0, 1.0)]
        for label, model, session in items[1:]:
            spec = {p.key: p.value for p in model.metadata_props}.get("bench.replay_spec")
            if spec is None:  # the input again (the tuner's A/A pair): the same model, ratio 1
                out.append(Latency(label, True, None, 1.0, 1.0, 1.0))
                continue
            lat = self.latencies[(spec, json.dumps(dict(session), sort_keys=True))]
            out.append(Latency(label, lat.ok, lat.median_ms, lat.ratio, lat.ci_low, lat.ci_high, lat.memory_mb,
                               lat.error))
        return out


def tagged(model_bytes: bytes, spec: str) -> bytes:
    model = onnx.load_from_string(model_bytes)
    model.metadata_props.add(key="bench.replay_spec", value=spec)
    return model.SerializeToString()


def strategies(name: str, args) -> dict:
    c = case(name)
    space = build_space(get_profile(PROFILE), GRID_RECIPE)
    points = space.grid()
    print(f"\n## strategies on {name}: {len(points)} grid points (target {c.target}); grid run with the real "
          f"profiler, {load()}", flush=True)
    start = time.perf_counter()
    grid = onnxopt.tune(c.model, profile=PROFILE, calib=c.calib, data=c.tune_eval, target=c.target,
                        budget=len(points), strategy="grid", seed=0, shapes=c.shapes, recipe=GRID_RECIPE)
    # (in memory: a trial reused from an on-disk cache carries no model to replay)
    grid_s = time.perf_counter() - start
    trials = grid.trials
    assert len(trials) == len(points), (len(trials), len(points))
    builds, latencies = {}, {}
    for t in trials:
        if t.status == "failed" and t.stage != "measure":
            builds[t.spec] = {"status": "failed", "stage": t.stage, "reason": t.reason}
        else:
            builds[t.spec] = {"status": "ok" if t.status != "violates" else "violates", "scores": t.scores,
                              "margin": t.margin, "size": t.size, "params": t.params, "macs": t.macs,
                              "model": tagged(t.model, t.spec), "notes": t.notes}
        if t.latency is not None:
            latencies[(t.spec, json.dumps(dict(t.session), sort_keys=True))] = t.latency
        elif t.status != "violates":
            latencies[(t.spec, json.dumps(dict(t.session), sort_keys=True))] = Latency("x", False, error=t.reason)
    ok = [t for t in trials if t.status == "ok"]
    optimum = min(ok, key=lambda t: t.latency.ratio)
    print(f"# grid: {len(trials)} trials in {grid_s:.0f} s ({len(ok)} meet the target, "
          f"{sum(t.status == 'violates' for t in trials)} violate, {sum(t.status == 'failed' for t in trials)} failed);"
          f" optimum ratio {optimum.latency.ratio:.3f} [{optimum.latency.ci_low:.3f}-{optimum.latency.ci_high:.3f}]"
          f" = {1 / optimum.latency.ratio:.2f}x: {optimum.spec} {optimum.session}; {load()}", flush=True)
    for t in sorted(ok, key=lambda t: t.latency.ratio)[:8]:
        print(f"#   {t.latency.ratio:.3f} [{t.latency.ci_low:.3f}-{t.latency.ci_high:.3f}] {t.spec} {t.session}",
              flush=True)
    limit = optimum.latency.ratio * (1 + WITHIN)
    within = sum(t.latency.ratio <= limit for t in ok)
    print(f"# {within} of {len(trials)} grid points are within 5% of the optimum (ratio <= {limit:.3f})", flush=True)

    counts: dict[str, list] = {}
    own_counts: dict[str, list] = {}
    for strategy in STRATEGIES:
        counts[strategy], own_counts[strategy] = [], []
        for seed in range(args.seeds):
            replay = onnxopt.tune(c.model, profile=PROFILE, calib=c.calib, data=c.tune_eval, target=c.target,
                                  budget=len(points), strategy=strategy, seed=seed, shapes=c.shapes,
                                  recipe=GRID_RECIPE, executor=ReplayExecutor(builds), meter=ReplayMeter(latencies),
                                  time_limit=args.replay_cap)
            hits = [t.status == "ok" and t.latency is not None and t.latency.ratio <= limit for t in replay.trials]
            hit = next((i + 1 for i, h in enumerate(hits) if h), None)
            # the strategy's own asks: trials after the told seeds (input, each single technique)
            searched = [h for h, t in zip(hits, replay.trials, strict=True) if t.origin in ("search", "grid")]
            own = next((i + 1 for i, h in enumerate(searched) if h), None)
            counts[strategy].append(hit)
            own_counts[strategy].append(own)
            print(f"#   {strategy} seed {seed}: {len(replay.trials)} trials ({len(replay.trials) - len(searched)} "
                  f"seeds), within 5% at trial {hit or 'never'}; among its own asks at {own or 'never'}", flush=True)
    return {"model": name, "points": len(points), "grid_s": grid_s, "optimum": optimum.latency.ratio,
            "optimum_spec": optimum.spec, "optimum_session": optimum.session, "within": within, "counts": counts,
            "own_counts": own_counts, "replay_cap": args.replay_cap,
            "optimum_is_seed": _is_seed(space, optimum.point)}


def _is_seed(space, point) -> bool:
    """Is this grid point one of the points the tuner tells first?"""
    from onnxopt.tuning.run import seed_points

    key = space.key(point)
    full = {d.name: d.default for d in space.dims}
    return any(space.key({**full, **values}) == key for _, values in seed_points(space))


def render_strategies(s: dict) -> str:
    n = s["points"]
    lines = [f"\nTrials to come within 5% of the grid optimum on {s['model']} ({n} points; REPLAY of the grid's "
             f"measured latencies and accuracy, not new measurements; each replay capped at "
             f"{s['replay_cap']:g} s; optimum {1 / s['optimum']:.2f}x vs fp32 input, "
             f"{s['within']} of {n} points within 5%)",
             "| strategy | trials, per seed | median | % of the grid | own asks only (after the seeds), per seed | "
             "median |", "|---|---|---|---|---|---|"]

    def cells(hits):
        med = statistics.median([h if h is not None else n + 1 for h in hits])
        return ", ".join(str(h) if h is not None else "never" for h in hits), med

    for strategy, hits in s["counts"].items():
        shown, med = cells(hits)
        own_shown, own_med = cells(s["own_counts"][strategy])
        lines.append(f"| {strategy} | {shown} | {med:g}{'' if med <= n else ' (never)'} | {med / n:.0%} | "
                     f"{own_shown} | {own_med:g}{'' if own_med <= n else ' (never)'} |")
    if s["optimum_is_seed"]:
        lines.append("- the grid optimum is one of the points the tuner tells first (its seeds), so every strategy "
                     "finds it at once; the 'own asks' columns count the strategy's search alone")
    ng = statistics.median([h if h is not None else n + 1 for h in s["counts"]["ngopt"]])
    lines.append(f"- default strategy (ngopt) within 5% of the grid optimum in <= 25% of the grid's trials "
                 f"({0.25 * n:g}): {'MET' if ng <= 0.25 * n else 'NOT MET'} (median {ng:g})")
    return "\n".join(lines)


def _per_model(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values or []:
        k, _, val = v.partition("=")
        out[k] = val
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"default: {' '.join(DEFAULT)} (--quick: digits)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, one replay seed")
    parser.add_argument("--budget", action="append", help="MODEL=TRIALS (repeatable)")
    parser.add_argument("--time", action="append", help="MODEL=CAP, e.g. ppocr_det=15m (repeatable)")
    parser.add_argument("--grid-model", default="digits")
    parser.add_argument("--no-strategies", action="store_true", help="skip part 2")
    parser.add_argument("--strategies-only", action="store_true", help="only part 2")
    parser.add_argument("--replay-cap", type=float, default=None,
                        help="seconds per replayed search (default 60, quick 15): BO's asks are slow")
    parser.add_argument("--seeds", type=int, default=None, help="replay seeds per strategy (default 5, quick 1)")
    parser.add_argument("--out", default="/tmp/bench_tuning", help="tuning outputs (reports, trial caches)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    args.budget, args.time = _per_model(args.budget), _per_model(args.time)
    args.seeds = args.seeds or (1 if args.quick else 5)
    args.replay_cap = args.replay_cap or (15.0 if args.quick else 60.0)
    names = args.models or (["digits"] if args.quick else DEFAULT)
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {cpu}, {os.cpu_count()} cores, onnxruntime "
          f"{onnxruntime.__version__}, profile {PROFILE}, {load()}", flush=True)
    models, strat = [], None
    for name in [] if args.strategies_only else names:
        models.append(bench_model(name, args))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps({"models": models}, indent=2, default=str))
    if not args.no_strategies:
        strat = strategies(args.grid_model, args)
        if args.json_path:
            Path(args.json_path).write_text(json.dumps({"models": models, "strategies": strat}, indent=2, default=str))
        print(render_strategies(strat), flush=True)
    print("\n# Summary")
    for m in models:
        print(render_model(m))
    if strat:
        print(render_strategies(strat))
    print("\nGoals (measured above):")
    print("\n".join(goals(models) if models else []))
    print(f"# done {time.strftime('%Y-%m-%d %H:%M')}, {load()}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"models": models, "strategies": strat}, indent=2, default=str))


if __name__ == "__main__":
    main()
