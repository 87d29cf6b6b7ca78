"""Edge outputs: ORT-format models and the NNAPI/CoreML usability check, as data.

Both wrap onnxruntime's own tools (``onnxruntime.tools.convert_onnx_models_to_ort`` and the
partitioning analysis behind ``check_onnx_model_mobile_usability``) rather than re-implementing them;
their console output is captured so library code stays silent, and their findings come back as
pydantic objects instead of log lines.

Example::

    artifact = emit_ort(model, "out/", "digits", target_platform="arm")
    report = mobile_usability(model, ("nnapi",))
    report.providers[0].suitability      # "YES" | "MAYBE" | "NO"
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import onnx
from pydantic import BaseModel

from onnxopt import model as model_io
from onnxopt.errors import MeasurementError

Suitability = Literal["YES", "MAYBE", "NO"]
# which onnxruntime op-support tables a mobile profile's provider is checked against
USABILITY_CHECKS = {
    "nnapi": [("NNAPI", None)],
    "coreml": [("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
               ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md")],
}
PROVIDER_KIND = {"NnapiExecutionProvider": "nnapi", "CoreMLExecutionProvider": "coreml"}


class OrtArtifact(BaseModel):
    """An ORT-format model written by onnxruntime's converter, and its required-operators config."""

    path: str
    size_bytes: int
    config_path: str | None
    target_platform: str | None


class EpUsability(BaseModel):
    """How much of the (basic-optimized) graph a mobile provider can take, by onnxruntime's op tables."""

    provider: str
    nodes: int
    supported_nodes: int
    partitions: int
    unsupported_ops: list[str]
    suitability: Suitability
    suitability_if_fixed_shapes: Suitability | None = None


class UsabilityReport(BaseModel):
    dynamic_inputs: list[str]
    providers: list[EpUsability]


class EdgeReport(BaseModel):
    """Edge outputs for one model; ``errors`` says what could not be produced and why."""

    model: str
    ort: OrtArtifact | None = None
    usability: UsabilityReport | None = None
    errors: list[str] = []


def emit_ort(model: onnx.ModelProto, out_dir: str | os.PathLike, stem: str,
             target_platform: Literal["arm", "amd64"] | None = None) -> OrtArtifact:
    """Convert to ORT format with onnxruntime's converter; write ``stem.ort`` (+ its ops config) into ``out_dir``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # the converter writes next to its output dir; a temp dir inside out_dir keeps the final move atomic
    with tempfile.TemporaryDirectory(prefix=".onnxopt-ort-", dir=folder) as tmp:
        source = Path(tmp) / "in" / f"{stem}.onnx"
        source.parent.mkdir()
        source.write_bytes(model.SerializeToString())
        converted = Path(tmp) / "out"
        try:
            with contextlib.redirect_stdout(io.StringIO()), _quiet("ort_format_model.utils"):
                outputs = convert_onnx_models_to_ort(source, output_dir=converted,
                                                     optimization_styles=[OptimizationStyle.Fixed],
                                                     target_platform=target_platform)
        except (RuntimeError, ValueError, OSError) as exc:
            raise MeasurementError(f"ORT-format conversion failed: {' '.join(str(exc).split())[:300]}") from None
        ort_files = sorted(converted.glob("*.ort")) if not outputs else [Path(p) for p in outputs]
        if not ort_files:
            raise MeasurementError("ORT-format conversion produced no .ort file")
        target = folder / f"{stem}.ort"
        os.replace(ort_files[0], target)
        config = next(iter(sorted(converted.glob("*.config"))), None)
        config_target = None
        if config is not None:
            config_target = folder / f"{stem}.required_operators.config"
            shutil.move(str(config), config_target)
    return OrtArtifact(path=str(target), size_bytes=target.stat().st_size,
                       config_path=str(config_target) if config_target else None, target_platform=target_platform)


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence one of onnxruntime's tool loggers for the duration (it logs INFO lines to stderr)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def mobile_usability(model: onnx.ModelProto, kinds: Sequence[str] = ("nnapi", "coreml")) -> UsabilityReport:
    """onnxruntime's NNAPI/CoreML partitioning analysis of ``model`` after basic optimization."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    unknown = [k for k in kinds if k not in USABILITY_CHECKS]
    if unknown:
        raise MeasurementError(f"no usability check for {', '.join(unknown)}", f"use {', '.join(USABILITY_CHECKS)}")
    # the checker wants the graph as onnxruntime will see it: basic-optimized, with inferred shapes
    shaped = onnx.shape_inference.infer_shapes(model_io.ort_optimize(model, "basic"))
    quiet = logging.getLogger("onnxopt.edge.quiet")
    quiet.setLevel(logging.CRITICAL)
    dynamic_inputs, _ = checker.check_shapes(shaped.graph, quiet)
    results = []
    for kind in kinds:
        for name, table in USABILITY_CHECKS[kind]:
            def check(fixed: bool, table=table):
                if table is None:
                    return checker.check_nnapi_partitions(shaped, fixed)
                return checker.check_coreml_partitions(shaped, fixed, table)

            info = check(True)
            relaxed = check(False).suitability().name if dynamic_inputs else None
            results.append(EpUsability(
                provider=name, nodes=info.num_nodes, supported_nodes=info.num_supported_nodes,
                partitions=info.num_partitions, unsupported_ops=sorted(info.unsupported_ops),
                suitability=info.suitability().name, suitability_if_fixed_shapes=relaxed))
    return UsabilityReport(dynamic_inputs=[str(getattr(i, "name", i)) for i in dynamic_inputs], providers=results)


def usability_kinds(provider_names: Sequence[str]) -> list[str]:
    """The usability checks that apply to a provider chain (NNAPI and/or CoreML)."""
    return list(dict.fromkeys(PROVIDER_KIND[n] for n in provider_names if n in PROVIDER_KIND))
