"""Intermediate activations on calibration data, streamed one feed at a time (never all in memory)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from onnxopt.model import infer_shapes, input_specs


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (types from shape inference)."""
    typed = infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.output,
                                                             *typed.graph.input]}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None))
            have.add(name)
    return copy


def stream(model: onnx.ModelProto, names: Sequence[str], data) -> Iterator[dict[str, np.ndarray]]:
    """For each feed of ``data``, the values of ``names`` (sample axis first)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(with_outputs(model, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    specs = input_specs(model)
    wanted = list(dict.fromkeys(names))
    for feed in data.feeds(specs):
        feed = {k: np.asarray(v, dtype=s.dtype) for (k, v), s in zip(feed.items(), specs, strict=False)}
        values = session.run(wanted, feed)
        yield dict(zip(wanted, values, strict=True))


def channel_means(result, data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean |activation| per channel position of every tensor a pruned consumer reads."""
    from onnxopt.prune.groups import channel_axes

    names = []
    for cut in result.an.cuts:
        tensor = cut.node.inputs[0]
        arr = result.an.get(tensor)
        if cut.role == "in" and arr is not None and len(channel_axes(arr)) == 1 and tensor.name not in names:
            names.append(tensor.name)
    model = _model_of(result)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for values in stream(model, names, data):
        count += 1
        for name, value in values.items():
            axis = channel_axes(result.an.atoms[name])[0]
            means = np.abs(np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)).mean(axis=1)
            sums[name] = sums.get(name, 0) + means
    return {name: (result.an.atoms[name].reshape(-1), total / max(count, 1)) for name, total in sums.items()}


def _model_of(result) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    return gs.export_onnx(result.graph.copy(), do_type_check=False)
