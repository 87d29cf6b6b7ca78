"""fp32 vs quantize modes on corpus models: size, latency (interleaved, 1 and 2 threads), fidelity.

Run: .venv/bin/python benchmarks/quantization.py [model ...]   (default: digits light_resnet50)
PP-OCR det (at 1x3x320x320) and cls are calibrated on the text-like pages of tests/corpus_data.py
(seed 0) and scored on other pages (seed 1); digits on its first 150 labelled images and scored on
the last 300; the light zoo models (random weights) on synthetic inputs (calib seed 0, score seed 1).
"iou" is the text-mask IoU (maps > 0.3) for det, "-" elsewhere.
Latency: the profiling service times the variants round-robin (A B C A B C ...) in one measurement
child so drift hits all alike, on the ``cpu`` profile with each item's session at 1 (then 2)
intra-op threads, until the profile's protocol is met (every median's 95% CI within 1%, or 20 s);
each cell is the median over rounds with p10-p90 spread, and the ratio is fp32/variant per round.
Latency-aware variants are chosen by timing on the same ``cpu`` profile (what ``onnxopt.optimize``
uses when no profile is given).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxopt.data import Dataset, load_data  # noqa: E402
from onnxopt.errors import OnnxOptError  # noqa: E402
from onnxopt.evaluate import fidelity  # noqa: E402
from onnxopt.model import fix_input_shapes  # noqa: E402
from onnxopt.passes import PassContext  # noqa: E402
from onnxopt.passes.quant import Fp16, Quantize  # noqa: E402
from onnxopt.passes.quant.prepare import negative_dims_to_symbolic  # noqa: E402
from onnxopt.profiling import get_profile  # noqa: E402
from onnxopt.profiling.measure import Item, measure_with_times  # noqa: E402
from onnxopt.profiling.service import ProfileMeasurer  # noqa: E402
from onnxopt.targets import mask_iou  # noqa: E402
from onnxopt.zoo import corpus  # noqa: E402
from tests.corpus_data import cls_inputs, det_inputs  # noqa: E402

MODES = {"static-qdq": {}, "static-qdq-gptq": {"rounding": "gptq"}, "static-qop": {"format": "qoperator"},
         "a16w8": {"activation_type": "u16"}, "a16w8-gptq": {"activation_type": "u16", "rounding": "gptq"},
         "dynamic": {"mode": "dynamic"}, "weight-only-int8": {"mode": "weight-only"},
         "weight-only-int4": {"mode": "weight-only", "bits": 4},
         "weight-only-int4-gptq": {"mode": "weight-only", "bits": 4, "algorithm": "gptq"},
         "latency-aware": {"latency_aware": True},
         "latency-aware-cos0.999": {"latency_aware": True, "target": "cosine>=0.999"},
         "mixed-cos0.999": {"target": "cosine>=0.999"},
         "mixed16-cos0.999": {"target": "cosine>=0.999", "fallback": "int16"}, "fp16": None}


def model_and_data(name: str) -> tuple:
    """(model, calibration data, scoring data): never the same samples."""
    model = corpus()[name]()
    if name == "ppocr_det":
        model = fix_input_shapes(model, {"x": [1, 3, 320, 320]})
        return model, Dataset({"x": det_inputs(8)}, None, "pages"), Dataset({"x": det_inputs(8, seed=1)}, None, "")
    if name == "ppocr_cls":
        negative_dims_to_symbolic(model)
        return model, Dataset({"x": cls_inputs(16)}, None, "lines"), Dataset({"x": cls_inputs(32, seed=1)}, None, "")
    if name == "digits":
        arrays = np.load("models/digits_eval.npz")
        x, y = arrays["input"].astype(np.float32), arrays["labels"]
        return model, Dataset({"input": x[:150]}, y[:150], "calib"), Dataset({"input": x[150:]}, y[150:], "held out")
    return model, load_data("synthetic:n=8,seed=0", model), load_data("synthetic:n=8,seed=1", model)


PROFILE = "cpu"


def interleaved(models: dict, feed: dict, threads: int) -> dict[str, list[float]]:
    """Seconds per round of each model, timed interleaved by the profiling service at ``threads``."""
    prof = get_profile(PROFILE)
    session = prof.session.model_copy(update={"intra_op_threads": threads})
    feeds = [feed]
    results, times = measure_with_times([Item(n, m, feeds, session=session) for n, m in models.items()], prof)
    failed = [f"{r.model}: {r.error}" for r in results if not r.ok]
    if failed:
        raise SystemExit(f"timing failed: {failed[0]}")
    return dict(zip(models, times, strict=True))


def convert_all(model, data) -> tuple[dict, dict]:
    """Every mode's model and conversion seconds; a mode that fails or refuses is reported and skipped."""
    variants, convert = {"fp32": model}, {"fp32": 0.0}
    measurer = ProfileMeasurer(PROFILE)
    for label, options in MODES.items():
        start = time.perf_counter()
        ctx = PassContext(data=data.take(min(len(data), 32)), measurer=measurer)
        try:
            chosen = Fp16() if options is None else Quantize(**options)
            variants[label] = chosen.apply(model, ctx)
        except OnnxOptError as exc:
            print(f"# {label} refused: {exc}", flush=True)
            continue
        convert[label] = time.perf_counter() - start
        kept = ctx.details.get("quantize", {})
        if "kept_in_float" in kept:
            print(f"# {label}: {len(kept['kept_in_float'])} in float, {len(kept.get('kept_16bit', []))} at 16-bit "
                  f"of {kept.get('quantizable_nodes')} quantizable", flush=True)
        for note in ctx.notes:
            if note.startswith(("WARNING", "mixed precision", "latency-aware", "fp16", "calibration:", "GPTQ")):
                print(f"#   {note[:300]}", flush=True)
    return variants, convert


def main(names: list[str]) -> None:
    print("model | variant | size KiB | threads | median ms (p10-p90) | speed-up vs fp32 (p10-p90 of paired rounds) "
          "| cosine mean | iou | top-1 acc | convert s")
    for name in names:
        model, data, scoring = model_and_data(name)
        variants, convert = convert_all(model, data)
        feed = {k: v[:1] for k, v in data.inputs.items()}
        fids = {k: fidelity(model, m, scoring) for k, m in variants.items()}
        ious = {k: _iou(model, m, scoring) if name == "ppocr_det" else None for k, m in variants.items()}
        for threads in (1, 2):
            times = interleaved(variants, feed, threads)
            base = np.array(times["fp32"])
            for label, values in times.items():
                ms, ratio = np.array(values) * 1e3, base / np.array(values)
                acc = fids[label].accuracy_candidate
                print(f"{name} | {label} | {variants[label].ByteSize() / 1024:.0f} | {threads} | {np.median(ms):.2f} "
                      f"({np.percentile(ms, 10):.2f}-{np.percentile(ms, 90):.2f}) | {np.median(ratio):.2f}x "
                      f"({np.percentile(ratio, 10):.2f}-{np.percentile(ratio, 90):.2f}) "
                      f"| {min(o.cosine_mean for o in fids[label].outputs):.4f} | "
                      f"{'-' if ious[label] is None else f'{ious[label]:.3f}'} | "
                      f"{'-' if acc is None else f'{acc:.3f}'} | {convert[label]:.1f}", flush=True)


def _iou(model, candidate, data) -> float:
    from onnxopt.evaluate import run

    return mask_iou(next(iter(run(model, data).values())), next(iter(run(candidate, data).values())))


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits", "light_resnet50"])
