"""Pruning benchmark: per corpus model and ratio, MACs/params before and after, latency ratio vs the
unpruned model (interleaved in one run, median and p90), and fidelity with and without recovery.

    .venv/bin/python benchmarks/pruning.py                       # digits, ppocr_cls, ppocr_det, resnet50
    .venv/bin/python benchmarks/pruning.py --models all --ratios 0.1,0.3,0.5 --json out.json

Calibration: the digits model uses its evaluation set (first 64 samples to fit, all 450 to score);
the others use synthetic inputs (seed 0 to fit, seed 1 to score), which is weaker evidence.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from onnxopt.data import load_data
from onnxopt.evaluate import fidelity
from onnxopt.prune.pruner import PruneOptions, prune_model
from onnxopt.stats import model_stats
from onnxopt.zoo import corpus

SHAPES = {"ppocr_det": {"x": [1, 3, 320, 320]}, "ppocr_cls": {"x": [1, 3, 48, 192]}}
DEFAULT = ["digits", "ppocr_cls", "ppocr_det", "light_resnet50"]


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def latency(reference, candidate, feed: dict, rounds: int = 30) -> dict:
    """Interleaved timings (A, B, A, B...) so drift hits both; medians, p90s and the median ratio."""
    sessions = [_session(reference), _session(candidate)]
    for s in sessions:
        s.run(None, feed)
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            s.run(None, feed)
            times[i].append((time.perf_counter() - start) * 1e3)
    a, b = np.array(times[0]), np.array(times[1])
    return {"ref_ms": round(float(np.median(a)), 3), "ref_p90": round(float(np.percentile(a, 90)), 3),
            "pruned_ms": round(float(np.median(b)), 3), "pruned_p90": round(float(np.percentile(b, 90)), 3),
            "speedup": round(float(np.median(a / b)), 3), "n": rounds}


def data_for(name: str, model):
    shapes = SHAPES.get(name)
    if name == "digits":
        return load_data("models/digits_eval.npz", model, limit=64), load_data("models/digits_eval.npz", model)
    return (load_data("synthetic:n=8,seed=0", model, shapes=shapes),
            load_data("synthetic:n=8,seed=1", model, shapes=shapes))


def bench(name: str, ratio: float, criterion: str) -> dict:
    model = corpus()[name]()
    shapes = SHAPES.get(name)
    calib, held_out = data_for(name, model)
    row = {"model": name, "ratio": ratio}
    before = model_stats(model, shapes)
    for mode in ("none", "lstsq"):
        pruned, report = prune_model(model, PruneOptions(ratio=ratio, criterion=criterion, recover=mode), shapes, calib)
        fid = fidelity(model, pruned, held_out)
        row[f"cosine_{mode}"] = round(fid.outputs[0].cosine_mean, 4)
        if fid.accuracy_candidate is not None:
            row["accuracy_ref"], row[f"accuracy_{mode}"] = fid.accuracy_reference, fid.accuracy_candidate
    after = model_stats(pruned, shapes)
    row.update(macs_before=before.macs_known, macs_after=after.macs_known,
               macs_drop=round(1 - after.macs_known / before.macs_known, 4), params_before=before.params,
               params_after=after.params, groups=f"{report['groups_prunable']}/{report['groups_total']}",
               coverage=report["macs_coverage"]["fraction"], reasons=report["unprunable_reasons"])
    feed = {k: v[:1] for k, v in held_out.inputs.items()}
    row.update(latency(model, pruned, feed))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT), help="comma list, or 'all'")
    parser.add_argument("--ratios", default="0.3")
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    names = list(corpus()) if args.models == "all" else args.models.split(",")
    rows = []
    for name in names:
        for ratio in (float(r) for r in args.ratios.split(",")):
            row = bench(name, ratio, args.criterion)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
