"""fp32 vs fp16 vs int8 on a GPU through the WebGPU plugin EP (``profiles/webgpu.toml``).

Run: python benchmarks/webgpu.py [--profile webgpu] [--models digits,ppocr_det,...] [--json out.json]
Needs onnxruntime >= 1.24.4 and onnxruntime-ep-webgpu; on Linux the Vulkan loader (libvulkan.so.1)
and the GPU's Vulkan driver. ``--profile cpu`` runs the same comparison on the CPU.

Each model is converted here (``fp16`` with its fidelity check, static int8 QDQ), the variants are
timed interleaved by ``onnxopt.profile`` (ratio fp32/variant with its 95% CI from paired rounds),
and each variant's outputs *on the target* (run by the measurement child) are compared with fp32
on the CPU, so a precision the GPU computes differently (fp16 accumulation) shows up in the cosine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxopt  # noqa: E402
from onnxopt.data import Dataset, load_data  # noqa: E402
from onnxopt.errors import OnnxOptError  # noqa: E402
from onnxopt.model import fix_input_shapes  # noqa: E402
from onnxopt.passes import PassContext  # noqa: E402
from onnxopt.passes.quant import Fp16, Quantize  # noqa: E402
from onnxopt.profiling.profiles import get_profile  # noqa: E402
from onnxopt.zoo import corpus  # noqa: E402

MODELS = ("digits", "ppocr_det", "ppocr_cls", "light_squeezenet", "light_resnet50")


def model_and_data(name: str):
    model = corpus()[name]()
    if name == "ppocr_det":
        from tests.corpus_data import det_inputs

        model = fix_input_shapes(model, {"x": [1, 3, 640, 640]})
        return model, Dataset({"x": det_inputs(8, size=640)}, None, "text pages")
    if name == "ppocr_cls":
        from tests.corpus_data import cls_inputs

        model = fix_input_shapes(model, {"x": [1, 3, 48, 192]})
        return model, Dataset({"x": cls_inputs(8)}, None, "text lines")
    if name == "digits":
        arrays = np.load(Path(__file__).resolve().parents[1] / "models" / "digits_eval.npz")
        return model, Dataset({"input": arrays["input"][:16].astype(np.float32)}, None, "digits")
    return model, load_data("synthetic:n=8,seed=0", model)


def cosine_on_target(reference, candidate, data, profile) -> float:
    """Mean row cosine of ``candidate``'s first output computed on the target (by the measurement
    child, on the profile's provider chain) against ``reference`` on the CPU."""
    from onnxopt.agreement import row_cosines
    from onnxopt.evaluate import run
    from onnxopt.profiling.service import ProfileMeasurer

    expected = next(iter(run(reference, data).values()))
    feeds = list(data.feeds(onnxopt.model.input_specs(candidate), 1))
    got = np.concatenate([outputs[0] for outputs in ProfileMeasurer(profile).outputs(candidate, feeds)])
    return float(np.mean(row_cosines(expected, got)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="webgpu")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    rows = []
    print("model | variant | median ms (95% CI) | speed-up vs fp32 (95% CI) | nodes on target | cosine on target "
          "| convert s", flush=True)
    for name in args.models.split(","):
        model, data = model_and_data(name)
        variants, seconds = {"fp32": model}, {"fp32": 0.0}
        for label, chosen in (("fp16", Fp16()), ("int8", Quantize(calib_size=8))):
            start = time.perf_counter()
            try:
                variants[label] = chosen.apply(model, PassContext(data=data))
            except OnnxOptError as exc:
                print(f"# {name} {label} refused: {exc.one_line()}", flush=True)
                continue
            seconds[label] = time.perf_counter() - start
        try:
            report = onnxopt.profile(list(variants.values()), profile=profile, data=data)
        except OnnxOptError as exc:
            print(f"# {name}: {exc.one_line()}", flush=True)
            continue
        ratios = {r.model: r for r in report.ratios}
        for (label, variant), result in zip(variants.items(), report.results, strict=True):
            if not result.ok:
                print(f"# {name} {label}: {result.error}", flush=True)
                continue
            lat, ratio = result.latency_ms, ratios.get(result.model)
            nodes = result.placement.nodes
            on_target = nodes.get(profile.provider, 0)
            cosine = cosine_on_target(model, variant, data.take(4), profile)
            speed = ("1.00x" if ratio is None
                     else f"{1 / ratio.ratio:.2f}x ({1 / ratio.ci_high:.2f}-{1 / ratio.ci_low:.2f})")
            print(f"{name} | {label} | {lat.median:.3f} ({lat.ci_low:.3f}-{lat.ci_high:.3f}) | {speed} | "
                  f"{on_target}/{sum(nodes.values())} | {cosine:.5f} | {seconds[label]:.1f}", flush=True)
            rows.append({"model": name, "variant": label, "latency_ms": lat.model_dump(),
                         "ratio_vs_fp32": None if ratio is None else ratio.model_dump(), "placement": nodes,
                         "cosine_on_target": cosine, "providers_used": result.providers_used,
                         "onnxruntime": result.onnxruntime_version})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
