"""The public functions behind ``onnxopt.*`` and every CLI command, all in memory.

Example, right after ``torch.onnx.export``::

    import onnxopt
    result = onnxopt.optimize(model_proto, passes="simplify", calib="calib.npz")
    result.model            # the optimized onnx.ModelProto
    result.report.fidelity  # agreement with the input model
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from pydantic import BaseModel

from onnxopt import model as model_io
from onnxopt.errors import DataError, MeasurementError, ModelError
from onnxopt.passes import Pass, PassContext, PassRecord, build, load_recipe
from onnxopt.passes.base import Progress
from onnxopt.stats import LayerCost, ModelStats, largest_layers, model_stats

Shapes = Mapping[str, Sequence[int]]


class TensorInfo(BaseModel):
    name: str
    dtype: str
    dims: list[int | str | None] | None


class InspectReport(BaseModel):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    ir_version: int
    producer: str
    stats: ModelStats
    size_on_disk: int | None
    largest_layers: list[LayerCost]
    notes: list[str] = []


class OptimizeReport(BaseModel):
    passes: list[PassRecord]
    before: ModelStats
    after: ModelStats
    fidelity: Any = None  # onnxopt.evaluate.Fidelity, or None when it could not be measured
    notes: list[str] = []


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: OptimizeReport


def load(source: model_io.ModelSource, *, opset: int | None = None, shapes: Shapes | None = None
         ) -> onnx.ModelProto:
    """Load and check a model from a path, bytes or a ModelProto (see ``onnxopt.model.load``)."""
    return model_io.load(source, opset=opset, shapes=shapes)


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None,
         protect: Sequence[str | os.PathLike] = (), force: bool = False) -> Path:
    """Write atomically; never overwrite a ``protect``-ed file (the input) unless ``force``."""
    return model_io.save(model, path, external_data=external_data, protect=protect, force=force)


def _tensor_info(spec: model_io.TensorSpec) -> TensorInfo:
    return TensorInfo(name=spec.name, dtype=str(spec.dtype), dims=list(spec.dims) if spec.dims is not None else None)


def inspect(source: model_io.ModelSource, *, shapes: Shapes | None = None, top: int = 10) -> InspectReport:
    """Inputs/outputs, opset, op histogram, params, MACs, size and the largest layers."""
    model = load(source)
    size = Path(source).stat().st_size if isinstance(source, str | os.PathLike) else None
    stats = model_stats(model, shapes)
    notes = []
    if stats.macs is None:
        dynamic = [s.describe() for s in model_io.input_specs(model) if s.is_dynamic]
        notes.append(f"MACs of {stats.layers_unknown} layer(s) unknown: symbolic input dims "
                     f"({'; '.join(dynamic)}); fix them with --shape NAME=1x3x224x224")
    return InspectReport(
        inputs=[_tensor_info(s) for s in model_io.input_specs(model)],
        outputs=[_tensor_info(s) for s in model_io.output_specs(model)],
        opset=model_io.default_opset(model), ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        stats=stats, size_on_disk=size, largest_layers=largest_layers(model, top, shapes), notes=notes,
    )


def _dataset(data: Any, model: onnx.ModelProto, shapes: Shapes | None, limit: int | None, image_spec: Any = None):
    from onnxopt.data import load_data

    return load_data(data, model, shapes=shapes, limit=limit, image_spec=image_spec)


def optimize(
    model: model_io.ModelSource,
    passes: str | Sequence | Pass | None = None,
    *,
    recipe: str | os.PathLike | None = None,
    calib: Any = None,
    shapes: Shapes | None = None,
    opset: int | None = None,
    seed: int = 0,
    fidelity: bool = True,
    fidelity_samples: int = 128,
    data: Any = None,
    image_spec: Any = None,
    profile: Any = None,
    progress: Progress | None = None,
    metric: str | None = None,
    measurer: Any = None,
) -> OptimizeResult:
    """Run a pipeline on a model and measure the result against the input, all in memory.

    ``passes`` is a spec string (``"simplify,prune:ratio=0.3"``), pass objects or (name, options)
    pairs; ``recipe`` a TOML file. ``calib`` is calibration data: a path (.npz/.npy/image folder),
    a mapping of arrays, a ``Dataset``, or ``"synthetic"``. ``shapes`` fixes symbolic input dims;
    ``opset`` upgrades the model first (``onnx.version_converter``).
    ``data`` is evaluation data for the fidelity check; without it, fidelity is measured on the
    last ``fidelity_samples`` samples of ``calib`` (calibrating passes read from the front), else
    on synthetic inputs (the report says which). ``image_spec`` (``"resize=256,crop=224,..."`` or
    an ``ImageSpec``) preprocesses image folders given as ``calib`` or ``data``.
    ``metric`` (``"module:function"``, ``(outputs, labels) -> float``) becomes the ``eval`` option of
    every ``quantize`` pass, for ``max_drop`` targets (the same as writing ``quantize:eval=...``).
    ``profile`` (a name, ``.toml`` path, dict or Profile) is the target: passes read what it
    accelerates, and passes that time models (``quantize:latency_aware=true``) measure on it through
    ``measurer`` (default: the profiling service on ``profile``, else on the ``cpu`` profile).
    """
    if (passes is None) == (recipe is None):
        from onnxopt.errors import ConfigError

        raise ConfigError("give exactly one of passes or recipe", "e.g. passes='simplify'")
    pipeline = build(load_recipe(recipe) if recipe is not None else passes)
    if metric is not None:
        from onnxopt.passes.quant import use_metric

        pipeline = use_metric(pipeline, metric)
    source = load(model, shapes=shapes, opset=opset)
    calib_data = _dataset(calib, source, shapes, None, image_spec) if calib is not None else None
    target = _target(profile)
    ctx = PassContext(data=calib_data, profile=target, seed=seed, shapes=shapes, progress=progress,
                      measurer=measurer if measurer is not None else _measurer(target))
    optimized, records = pipeline.run(source, ctx)
    before = records[0].before if records else model_stats(source, shapes)
    report = OptimizeReport(passes=records, before=before, after=records[-1].after if records else before)
    if fidelity:
        held_out = _dataset(data, source, shapes, None, image_spec) if data is not None else calib_data
        report.fidelity, note = _fidelity(source, optimized, held_out, shapes, seed, fidelity_samples)
        if note:
            report.notes.append(note)
    return OptimizeResult(optimized, report)


def _target(profile: Any):
    """The device profile from a name, path or dict (None stays None: passes then use their defaults)."""
    if profile is None:
        return None
    from onnxopt.profiling import get_profile

    return get_profile(profile)


def _measurer(target: Any):
    """The profiling service on the target profile, which checks its providers only when asked to time."""
    from onnxopt.profiling.service import default_measurer

    return default_measurer(target)


def _fidelity(reference, candidate, data, shapes, seed, samples):
    """Fidelity on the tail of the given data, else on labelled-synthetic inputs; None with a reason."""
    from onnxopt.data import load_data
    from onnxopt.evaluate import fidelity

    try:
        dataset = data.tail(samples) if data is not None else load_data(
            f"synthetic:n={min(samples, 8)},seed={seed}", reference, shapes=shapes)
        return fidelity(reference, candidate, dataset), None
    except (DataError, MeasurementError, ModelError) as exc:
        return None, f"fidelity not measured: {exc.one_line()}"


def compare(a: model_io.ModelSource, b: model_io.ModelSource, *, data: Any = None, shapes: Shapes | None = None,
            limit: int | None = None, seed: int = 0, image_spec: Any = None):
    """Run both models on the same inputs and return per-output agreement (``evaluate.Fidelity``)."""
    from onnxopt.evaluate import fidelity

    reference, candidate = load(a, shapes=shapes), load(b, shapes=shapes)
    dataset = _dataset(data if data is not None else f"synthetic:n=8,seed={seed}", reference, shapes, limit,
                       image_spec)
    return fidelity(reference, candidate, dataset)


def profile(models: model_io.ModelSource | Sequence[model_io.ModelSource], *, profile: Any = None, data: Any = None,
            shapes: Shapes | None = None, **options: Any):
    """Latency on a device profile (default ``cpu``); several models are measured interleaved with ratios.

    Returns ``onnxopt.profiling.profiler.ProfileReport``; options: batch_size, seed, timeout_s, emit_ort,
    mobile_check, write_settings (see ``onnxopt.profiling.profiler.profile``)."""
    from onnxopt.profiling.profiler import profile as run_profile

    return run_profile(models, profile=profile, data=data, shapes=shapes, **options)


def list_passes() -> dict[str, type[Pass]]:
    """The registered passes by name."""
    from onnxopt.passes import registered

    return registered()


class SensitivityReport(BaseModel):
    """Per prunable channel group: output cosine (or accuracy) after pruning only that group."""

    metric: str
    reference: float
    ratios: list[float]
    groups: list[dict]
    suggested_overrides: list[str] = []
    macs_budget: float | None = None
    budget_overrides: list[str] = []  # ratios spending ``macs_budget`` where the curves say it costs least
    budget_macs_drop: float | None = None  # what those per-group drops add up to (approximate)


def sensitivity(model: model_io.ModelSource, *, data: Any = None, ratios: Sequence[float] = (0.1, 0.3, 0.5),
                shapes: Shapes | None = None, limit: int | None = 32, criterion: str = "auto",
                min_score: float = 0.99, progress: Progress | None = None,
                macs_budget: float | None = None) -> SensitivityReport:
    """Prune each channel group alone at each ratio; report the fidelity curve (accuracy when the data
    has labels, else mean output cosine) and per-group ratios keeping the score >= ``min_score``
    (of the reference accuracy, for accuracy), ready for ``prune:overrides=...``; with ``macs_budget``
    (a fraction), also the per-group ratios that remove it at the least measured damage."""
    from onnxopt.evaluate import fidelity
    from onnxopt.passes.prune.sensitivity import curves, for_macs_budget, suggest

    source = load(model, shapes=shapes)
    dataset = _dataset(data if data is not None else "synthetic:n=8,seed=0", source, shapes, limit)

    def measure(candidate: onnx.ModelProto) -> float:
        result = fidelity(source, candidate, dataset)
        return result.accuracy_candidate if result.accuracy_candidate is not None else result.outputs[0].cosine_mean

    reference = fidelity(source, source, dataset)
    use_accuracy = reference.accuracy_reference is not None
    base = reference.accuracy_reference if use_accuracy else 1.0
    rows = curves(source, list(ratios), measure, shapes, criterion, progress, data=dataset)
    report = SensitivityReport(metric="accuracy" if use_accuracy else "cosine", reference=base, ratios=list(ratios),
                               groups=rows, suggested_overrides=suggest(rows, min_score * base))
    if macs_budget is not None:
        report.macs_budget = macs_budget
        report.budget_overrides, drop = for_macs_budget(rows, macs_budget)
        report.budget_macs_drop = round(drop, 4)
    return report
