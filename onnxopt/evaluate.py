"""Fidelity (how closely a candidate model's outputs follow the reference's) and top-1 accuracy.

``fidelity`` runs both models on the same data with onnxruntime and compares every output per
sample: cosine similarity (mean and worst sample), max absolute difference, relative L2 error and,
for class-like outputs, how often the top-1 class agrees. All maths is in float64.

Example::

    data = load_data("models/digits_eval.npz", reference)
    report = fidelity(reference, quantized, data)
    assert report.cosine_min > 0.99 and report.top1_agreement >= 0.98
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, computed_field

from onnxopt.agreement import cosines as row_agreement
from onnxopt.data import Dataset
from onnxopt.errors import ConfigError, DataError, MeasurementError
from onnxopt.model import TensorSpec, input_specs

TINY = np.finfo(np.float64).tiny


class OutputFidelity(BaseModel):
    """Agreement of one output; ``top1_agreement`` only for class-like outputs, ``exact_match`` only
    for integer/bool outputs, the accuracies only when labels were given."""

    # a NaN-producing candidate has an infinite max diff; keep it visible in JSON instead of null
    model_config = ConfigDict(ser_json_inf_nan="constants")
    name: str
    candidate_name: str
    paired_by_position: bool = False
    cosine_mean: float
    cosine_min: float
    max_abs_diff: float
    rel_l2: float
    top1_agreement: float | None = None
    exact_match: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    notes: tuple[str, ...] = ()


class Fidelity(BaseModel):
    """Per-output agreement plus where the data came from (synthetic data is always flagged)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    outputs: list[OutputFidelity]
    samples: int
    synthetic: bool
    source: str
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None

    @computed_field
    @property
    def cosine_min(self) -> float:
        return min(o.cosine_min for o in self.outputs)

    @computed_field
    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @computed_field
    @property
    def max_abs_diff(self) -> float:
        return max(o.max_abs_diff for o in self.outputs)

    @computed_field
    @property
    def paired_by_position(self) -> bool:
        return any(o.paired_by_position for o in self.outputs)


# ---------------------------------------------------------------- running


def run(
    model: onnx.ModelProto,
    data: Dataset,
    *,
    batch_size: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` on every sample; each output's results joined along a leading sample axis."""
    session = _session(model, providers, threads)
    specs = input_specs(model)
    data = _cast_to(data, specs)
    names = [o.name for o in session.get_outputs()]
    stack = not data.batched(specs)  # one whole feed per sample: outputs gain a sample axis
    results: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed in data.feeds(specs, batch_size):
        for name, value in zip(names, _run_once(session, feed), strict=True):
            results[name].append(np.asarray(value))
    if not any(results.values()):
        raise DataError(f"{data.source} has no samples")
    joined = {}
    for name, values in results.items():
        try:
            joined[name] = np.stack(values) if stack or values[0].ndim == 0 else np.concatenate(values)
        except ValueError:
            shapes = sorted({v.shape for v in values})[:3]
            raise MeasurementError(f"output {name!r} changes shape between samples ({shapes})",
                                   "compare with a fixed input size") from None
    return joined


def _session(model: onnx.ModelProto, providers: Sequence[str], threads: int | None):
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing or not providers:
        raise ConfigError(f"execution providers not available here: {', '.join(missing) or '(none given)'}",
                          f"available: {', '.join(available)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    except _ort_errors() as exc:
        raise MeasurementError(f"onnxruntime cannot load the model: {_one_line(exc)}") from None
    if session.get_providers()[0] != providers[0]:
        # onnxruntime falls back to the CPU silently; numbers from the wrong provider would mislead
        raise MeasurementError(f"{providers[0]} failed to start; onnxruntime fell back to {session.get_providers()[0]}",
                               "check the provider's libraries and drivers")
    return session


def _run_once(session, feed: Mapping[str, np.ndarray]) -> list:
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    try:
        return session.run(None, dict(feed))
    except (InvalidArgument, ValueError) as exc:
        hint = "check the data's shapes and dtypes"
        raise DataError(f"onnxruntime rejects the input: {_one_line(exc)}", hint) from None
    except _ort_errors() as exc:
        raise MeasurementError(f"onnxruntime failed while running the model: {_one_line(exc)}") from None


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    native = tuple(c for c in vars(state).values() if isinstance(c, type) and issubclass(c, Exception))
    return (*native, RuntimeError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # drop onnxruntime's "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :" preamble
    return text.split(" : ", 3)[-1] if text.startswith("[ONNXRuntimeError]") else text


def _cast_to(data: Dataset, specs: Sequence[TensorSpec]) -> Dataset:
    """Cast arrays to each input's dtype within the same kind: an fp16 candidate takes float16 inputs
    where the reference took float32, and both must see the same samples."""
    inputs = dict(data.inputs)
    for spec in specs:
        array = inputs.get(spec.name)
        if array is not None and array.dtype != spec.dtype and array.dtype.kind == spec.dtype.kind:
            inputs[spec.name] = array.astype(spec.dtype)
    return Dataset(inputs, data.labels, data.source, data.synthetic)


# ---------------------------------------------------------------- comparing


def fidelity(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: Dataset, **run_kwargs) -> Fidelity:
    """Run both models on ``data`` and compare their outputs (accuracy too when data has labels)."""
    outputs = compare_outputs(run(reference, data, **run_kwargs), run(candidate, data, **run_kwargs), data.labels)
    primary = outputs[0]
    return Fidelity(
        outputs=outputs,
        samples=len(data),
        synthetic=data.synthetic,
        source=data.source,
        accuracy_reference=primary.accuracy_reference,
        accuracy_candidate=primary.accuracy_candidate,
    )


def compare_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], labels: np.ndarray | None = None
) -> list[OutputFidelity]:
    """Compare outputs by name, or by position when the names differ but the counts match."""
    if not reference:
        raise MeasurementError("the reference has no outputs to compare")
    by_position = set(reference) != set(candidate)
    if by_position and len(reference) != len(candidate):
        raise MeasurementError(f"outputs differ: reference has {', '.join(reference)}; candidate has "
                               f"{', '.join(candidate)}", "the candidate must keep the model's outputs")
    pairs = zip(reference, candidate if by_position else reference, strict=True)
    return [_compare_one(r, c, reference[r], candidate[c], labels, by_position) for r, c in pairs]


def _compare_one(name: str, cand_name: str, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None,
                 by_position: bool) -> OutputFidelity:
    if ref.shape != cand.shape:
        raise MeasurementError(f"output {name!r}: reference shape {ref.shape} but candidate shape {cand.shape}")
    samples = ref.shape[0] if ref.ndim else 1
    if samples == 0:
        raise MeasurementError(f"output {name!r} has no samples to compare")
    r = ref.astype(np.float64).reshape(samples, -1)
    c = cand.astype(np.float64).reshape(samples, -1)
    # positions where both agree exactly (incl. the same inf or both NaN) count as no difference
    same = (r == c) | (np.isnan(r) & np.isnan(c))
    bad = ~same & ~(np.isfinite(r) & np.isfinite(c))
    notes = tuple(f"{who} has {int(n)} non-finite values" for who, n in
                  (("reference", np.size(r) - np.isfinite(r).sum()), ("candidate", np.size(c) - np.isfinite(c).sum()))
                  if n)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same | bad, 0.0, np.abs(c - r))
    cosines = row_agreement(r, c, bad.any(axis=1), same.all(axis=1))
    rel = np.inf if bad.any() else _rel_l2(diff, np.where(np.isfinite(r), r, 0.0))
    result = OutputFidelity(
        name=name,
        candidate_name=cand_name,
        paired_by_position=by_position,
        cosine_mean=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        max_abs_diff=float(np.inf if bad.any() else diff.max(initial=0.0)),
        rel_l2=float(rel),
        exact_match=None if ref.dtype.kind == "f" else float(same.all(axis=1).mean()),
        notes=notes,
    )
    if is_class_like(ref):
        valid = ~bad.reshape(samples, -1).any(axis=1)
        agree = (np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)).reshape(samples, -1).all(axis=1)
        result.top1_agreement = float((agree & valid).mean())
        if labels is not None:
            result.accuracy_reference, result.accuracy_candidate = accuracy(ref, labels), accuracy(cand, labels)
    return result


def _rel_l2(diff: np.ndarray, ref: np.ndarray) -> float:
    """``||diff|| / ||ref||``, both scaled first so values near float64's limit cannot overflow."""
    scale = max(float(diff.max(initial=0.0)), float(np.abs(ref).max(initial=0.0)))
    if scale == 0.0:
        return 0.0
    return float(np.linalg.norm(diff / scale)) / max(float(np.linalg.norm(ref / scale)), TINY)


def is_class_like(output: np.ndarray) -> bool:
    """A float output whose per-sample shape is ``[C]`` or ``[1, C]`` with ``C > 1`` (class scores)."""
    per_sample = output.shape[1:]
    if output.dtype.kind != "f" or len(per_sample) not in (1, 2):
        return False
    return per_sample[-1] > 1 and per_sample[:-1] in ((), (1,))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of class scores ``[N, C]`` (or ``[N, 1, C]``) against integer labels ``[N]``."""
    outputs, labels = np.asarray(outputs), np.asarray(labels)
    if not is_class_like(outputs):
        raise MeasurementError(f"output of shape {outputs.shape} is not class scores; accuracy needs [N, C]")
    labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.shape != outputs.shape[:1]:
        raise DataError(f"{labels.size} labels for {len(outputs)} outputs", "give one integer label per sample")
    if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))):
        raise DataError(f"labels must be integer class indices, not {labels.dtype}")
    predicted = np.argmax(outputs.reshape(len(outputs), -1), axis=1)
    return float((predicted == labels.astype(np.int64)).mean())
