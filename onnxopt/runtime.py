"""Run a model on a dataset with onnxruntime: every sample, outputs joined along a sample axis.

The primitive under ``evaluate.fidelity`` and under the passes that judge their own candidates
(quantization's accuracy targets); it sits with ``model`` and ``data`` below both. It never falls
back to another provider silently, and onnxruntime's failures become one-line onnxopt errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxopt.data import Dataset
from onnxopt.errors import ConfigError, DataError, MeasurementError
from onnxopt.model import TensorSpec, input_specs


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
