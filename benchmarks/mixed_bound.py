"""How far float fallback of a node budget can go: greedy over quantized tensors, re-measured each step.

    .venv/bin/python benchmarks/mixed_bound.py [--model ppocr_det] [--budget 0.1] [--method percentile]

Starts from the all-int8 QDQ model (calibrated like benchmarks/quantization.py's data) and, each
step, takes out of quantization the tensor whose Q/DQ pair removes the most output error per node
it newly puts in float, measured on the current model (so gains that overlap or only add up
together are seen), until the budget of quantizable nodes is spent. This is the ideal fallback of
that many nodes (only the chosen tensors unrounded), a bound for what mixed precision can reach;
about a minute per step on PP-OCRv4 det on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quantization import model_and_data  # noqa: E402
from onnxopt.model import input_specs  # noqa: E402
from onnxopt.passes.quant.calib import dataset_feeds  # noqa: E402
from onnxopt.passes.quant.config import QuantizeConfig, resolve  # noqa: E402
from onnxopt.passes.quant.damage import output_error, run_feeds, tensor_gains, without_pairs  # noqa: E402
from onnxopt.passes.quant.static import StaticQuantizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ppocr_det")
    parser.add_argument("--budget", type=float, default=0.1, help="share of the quantizable nodes")
    parser.add_argument("--method", default="percentile", help="calibration (percentile: 99.9)")
    args = parser.parse_args()
    model, calib, _ = model_and_data(args.model)
    cfg = QuantizeConfig(method=args.method, percentile=99.9, calib_size=len(calib))
    quantizer = StaticQuantizer(model, calib, cfg, resolve(cfg))
    quantizable = set(quantizer.quantizable())
    budget = int(args.budget * len(quantizable))
    qdq = quantizer.quantize()
    feeds = list(dataset_feeds(calib, input_specs(quantizer.model)))
    reference = run_feeds(quantizer.model, feeds)
    print(f"{args.model}: {len(quantizable)} quantizable nodes, budget {budget}; all int8 cosine "
          f"{1 - output_error(reference, run_feeds(qdq, feeds)):.5f} ({cfg.method})", flush=True)
    chosen: list[str] = []
    in_float: set[str] = set()
    work = qdq
    while True:
        start = time.perf_counter()
        gains = tensor_gains(quantizer.model, work, feeds, reference)

        cost = {g.tensor: len((set(g.nodes) & quantizable) - in_float) for g in gains}
        fits = [g for g in gains if g.gain > 0 and len(in_float) + cost[g.tensor] <= budget]
        if not fits or (len(in_float) == budget and max(g.gain for g in fits) < 1e-4):
            break
        best = max(fits, key=lambda g: g.gain / max(cost[g.tensor], 0.5))
        added = cost[best.tensor]
        chosen.append(best.tensor)
        in_float |= set(best.nodes) & quantizable
        work = without_pairs(quantizer.model, qdq, chosen)
        cosine = 1 - output_error(reference, run_feeds(work, feeds))
        print(f"+ {best.tensor}: {added} more node(s) in float, {len(in_float)} in all -> cosine {cosine:.5f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"bound: {len(in_float)} of {len(quantizable)} nodes in float -> cosine "
          f"{1 - output_error(reference, run_feeds(work, feeds)):.5f}")


if __name__ == "__main__":
    main()
