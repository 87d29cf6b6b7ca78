"""fp32 vs quantize modes on corpus models: size, latency (interleaved, 1 and 2 threads), fidelity.

Run: .venv/bin/python benchmarks/quantization.py [model ...]   (default: digits light_resnet50)
Latency: the variants are timed round-robin (A B C A B C ...) in one process so drift hits all
alike; each cell is the median over rounds with p10-p90 spread, and the ratio is fp32/variant.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "quant"))

from onnxopt.data import load_data  # noqa: E402
from onnxopt.evaluate import fidelity  # noqa: E402
from onnxopt.passes import PassContext  # noqa: E402
from onnxopt.passes.quantize import Quantize  # noqa: E402
from onnxopt.zoo import corpus  # noqa: E402

MODES = {"static-qdq": {}, "static-qop": {"format": "qoperator"}, "dynamic": {"mode": "dynamic"},
         "weight-only-int8": {"mode": "weight-only"}}


def interleaved(models: dict, feed: dict, threads: int, rounds: int = 30) -> dict[str, list[float]]:
    sessions = {}
    for name, model in models.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = threads, 3
        sessions[name] = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sessions[name].run(None, feed)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return times


def main(names: list[str]) -> None:
    loaders = corpus()
    print("model | variant | size KiB | threads | median ms (p10-p90) | speed-up vs fp32 | cosine mean | convert s")
    for name in names:
        model = loaders[name]()
        data = load_data("models/digits_eval.npz" if name == "digits" else "synthetic:n=8", model)
        variants, convert = {"fp32": model}, {"fp32": 0.0}
        for label, options in MODES.items():
            start = time.perf_counter()
            variants[label] = Quantize(**options).apply(model, PassContext(data=data.take(min(len(data), 32))))
            convert[label] = time.perf_counter() - start
        feed = {k: v[:1] for k, v in data.inputs.items()}
        cosines = {k: min(o.cosine_mean for o in fidelity(model, m, data.take(8)).outputs) for k, m in variants.items()}
        for threads in (1, 2):
            times = interleaved(variants, feed, threads)
            base = np.median(times["fp32"])
            for label, values in times.items():
                ms = np.array(values) * 1e3
                print(f"{name} | {label} | {variants[label].ByteSize() / 1024:.0f} | {threads} | {np.median(ms):.2f} "
                      f"({np.percentile(ms, 10):.2f}-{np.percentile(ms, 90):.2f}) | {base / np.median(values):.2f}x "
                      f"| {cosines[label]:.4f} | {convert[label]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits", "light_resnet50"])
