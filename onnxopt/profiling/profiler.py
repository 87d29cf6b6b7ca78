"""``profile()``: load models and inputs, measure them on a device profile, add edge outputs.

One model gives one measurement; several are measured interleaved (A B A B ...) and each gets its
ratio to the first. The result is data only: it never prints and never decides which model wins.

Example::

    report = profile("model.onnx", profile="cpu-1t")
    report.results[0].latency_ms.median, report.results[0].placement.nodes
    report = profile(["base.onnx", "int8.onnx"], profile="cpu", data="calib.npz")
    report.ratios[0].ratio, report.ratios[0].ci_low, report.ratios[0].ci_high
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import onnx
from pydantic import BaseModel

from onnxopt import model as model_io
from onnxopt.data import Dataset, load_data
from onnxopt.errors import MeasurementError
from onnxopt.profiling.ab import measure_ab
from onnxopt.profiling.edge import EdgeReport, emit_ort, mobile_usability, usability_kinds
from onnxopt.profiling.measure import Item, measure, provider_chain
from onnxopt.profiling.profiles import Profile, get_profile
from onnxopt.profiling.results import Measurement, Ratio
from onnxopt.profiling.settings import write_settings as write_settings_files

Shapes = Mapping[str, Sequence[int]]


class ProfileReport(BaseModel):
    """Everything one ``profile()`` call measured and wrote."""

    profile: str
    provider: str
    interleaved: bool
    results: list[Measurement]
    ratios: list[Ratio] = []
    edge: list[EdgeReport] = []
    settings_files: list[str] = []

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def profile(
    models: model_io.ModelSource | Sequence[model_io.ModelSource],
    *,
    profile: str | os.PathLike | Profile | Mapping[str, Any] | None = None,
    data: Any = None,
    shapes: Shapes | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    timeout_s: float | None = None,
    emit_ort: str | os.PathLike | None = None,
    mobile_check: bool | None = None,
    write_settings: str | os.PathLike | None = None,
) -> ProfileReport:
    """Measure one model, or several interleaved, on a device profile (default ``cpu``).

    ``data`` is anything ``onnxopt.data.load_data`` takes (default: deterministic synthetic inputs);
    ``emit_ort`` writes ORT-format models there; ``mobile_check`` runs the NNAPI/CoreML usability
    check (default: the profile's ``edge.mobile_check``); ``write_settings`` writes each model with
    its session settings embedded, plus a sidecar JSON, into that folder."""
    prof = get_profile(profile)
    if batch_size is not None:
        prof = prof.model_copy(update={"inputs": prof.inputs.model_copy(update={"batch_size": batch_size})})
    provider_chain(prof)  # a missing provider fails before any model is loaded
    sources = list(models) if isinstance(models, list | tuple) else [models]
    labels = _labels(sources)
    loaded = [_load(src, prof, shapes) for src in sources]
    items = [_item(label, model, data, prof, seed) for label, (model, _) in zip(labels, loaded, strict=True)]
    if len(items) == 1:
        results, ratios = measure(items, prof, timeout_s=timeout_s), []
    else:
        results, ratios = measure_ab(items, prof, timeout_s=timeout_s)
    report = ProfileReport(profile=prof.name, provider=prof.provider, interleaved=len(items) > 1,
                           results=results, ratios=ratios)
    check = prof.edge.mobile_check if mobile_check is None else mobile_check
    if emit_ort is not None or check:
        report.edge = [_edge(label, model, prof, emit_ort, check) for label, (model, _) in zip(labels, loaded,
                                                                                              strict=True)]
    if write_settings is not None:
        for src, label in zip(sources, labels, strict=True):
            protect = (src,) if isinstance(src, str | os.PathLike) else ()
            written = write_settings_files(model_io.load(src), prof, write_settings, _stem(label), protect=protect)
            report.settings_files.extend(str(p) for p in written)
    return report


def _labels(sources: list[model_io.ModelSource]) -> list[str]:
    labels = [str(s) if isinstance(s, str | os.PathLike) else f"model{i}" for i, s in enumerate(sources)]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # the same file twice (an A/A check) still needs two names
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


def _stem(label: str) -> str:
    name, _, copy = label.partition("#")
    stem = Path(name).stem or "model"
    return f"{stem}-{copy}" if copy else stem


def _load(source: model_io.ModelSource, prof: Profile, shapes: Shapes | None) -> tuple[onnx.ModelProto, dict]:
    """Load with the user's shapes, plus the profile's shapes for inputs this model has."""
    model = model_io.load(source)
    names = {s.name for s in model_io.input_specs(model)}
    merged = {k: v for k, v in prof.inputs.shapes.items() if k in names}
    merged.update(shapes or {})
    return (model_io.fix_input_shapes(model, merged) if merged else model), merged


def _item(label: str, model: onnx.ModelProto, data: Any, prof: Profile, seed: int) -> Item:
    """The model with its feeds: ``inputs.samples`` batches, the same ones every run."""
    samples, batch = prof.inputs.samples, prof.inputs.batch_size
    source = data if data is not None else f"synthetic:n={samples * batch},seed={seed}"
    dataset: Dataset = load_data(source, model)
    specs = model_io.input_specs(model)
    # arrays whose leading axis is the model's batch axis are sliced into batches; stacked ones are whole feeds
    step = (_fixed_batch(specs) or batch) if dataset.batched(specs) else 1
    feeds = list(islice(dataset.feeds(specs, step), samples))
    if not feeds:
        raise MeasurementError(f"{label}: the data gives no inputs to measure with")
    first = next(iter(feeds[0].values()))
    actual = int(first.shape[0]) if first.ndim else 1
    return Item(label, model, feeds, synthetic=dataset.synthetic, source=dataset.source, batch_size=actual)


def _fixed_batch(specs: list[model_io.TensorSpec]) -> int | None:
    return next((s.dims[0] for s in specs if s.dims and isinstance(s.dims[0], int)), None)


def _edge(label: str, model: onnx.ModelProto, prof: Profile, out_dir: str | os.PathLike | None,
          check: bool) -> EdgeReport:
    report = EdgeReport(model=label)
    if out_dir is not None:
        try:
            report.ort = emit_ort(model, out_dir, _stem(label), prof.edge.target_platform)
        except MeasurementError as exc:
            report.errors.append(exc.one_line())
    if check:
        kinds = usability_kinds([p.name for p in prof.providers]) or ["nnapi", "coreml"]
        try:
            report.usability = mobile_usability(model, kinds)
        except (MeasurementError, ValueError, RuntimeError) as exc:  # the checker raises ValueError on odd graphs
            report.errors.append(f"usability check failed: {exc}")
    return report
