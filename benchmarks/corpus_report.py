"""What `onnxopt inspect` and `onnxopt optimize --passes simplify` report for every corpus model.

    .venv/bin/python benchmarks/corpus_report.py [--passes simplify] [--only NAME ...]

Prints one row per model: size, params, MACs before and after, nodes, and fidelity against the
input (cosine min, max |diff|, top-1 agreement) on synthetic inputs, or on the held-out set for
the digits model. Models are fetched/cached by onnxopt.zoo.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnxopt  # noqa: E402
from onnxopt import zoo  # noqa: E402

SHAPES = {"ppocr_det": {"x": [1, 3, 640, 640]}, "ppocr_cls": {"x": [1, 3, 48, 192]}}
DATA = {"digits": str(Path(__file__).resolve().parent.parent / "models" / "digits_eval.npz")}


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _gmacs(macs: int | None) -> str:
    return "?" if macs is None else f"{macs / 1e9:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", default="simplify")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    print(f"{'model':20} {'MB':>7} {'params':>11} {'GMACs':>7} {'nodes':>11} {'MB after':>8} {'GMACs after':>11} "
          f"{'cos min':>9} {'max|diff|':>9} {'top1':>5} {'sec':>5}  data")
    for name, loader in zoo.corpus().items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        model = loader()
        result = onnxopt.optimize(model, args.passes, calib=DATA.get(name), shapes=SHAPES.get(name),
                                  fidelity_samples=64)
        before, after, fid = result.report.before, result.report.after, result.report.fidelity
        top1 = "-" if fid is None or fid.top1_agreement is None else f"{fid.top1_agreement:.3f}"
        print(f"{name:20} {_mb(before.size_bytes):>7} {before.params:>11,} {_gmacs(before.macs):>7} "
              f"{before.nodes:>5}->{after.nodes:<5} {_mb(after.size_bytes):>8} {_gmacs(after.macs):>11} "
              f"{fid.cosine_min if fid else float('nan'):>9.6f} {fid.max_abs_diff if fid else float('nan'):>9.2g} "
              f"{top1:>5} {time.perf_counter() - start:>5.1f}  {fid.source if fid else '-'}", flush=True)


if __name__ == "__main__":
    main()
