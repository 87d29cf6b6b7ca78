"""Intermediate activations on calibration data, streamed one feed at a time (never all in memory)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ChannelStats:
    """Per channel position of a tensor (flat atom order): mean |x|, mean x and variance of x over
    samples and space."""

    atoms: np.ndarray
    mean_abs: np.ndarray
    mean: np.ndarray
    variance: np.ndarray


class Calibration:
    """Calibration data and the channel statistics of the unpruned model on it, computed once: they
    depend only on the model, so every fresh analysis of it (one per sensitivity point) shares them."""

    def __init__(self, data):
        self.data = data
        self._stats: dict[str, ChannelStats] | None = None

    def stats(self, result) -> dict[str, ChannelStats]:
        if self._stats is None:
            self._stats = channel_stats(result, self.data)
        return self._stats

    @staticmethod
    def of(data) -> Calibration | None:
        return data if isinstance(data, Calibration) or data is None else Calibration(data)


def channel_stats(result, data) -> dict[str, ChannelStats]:
    """Statistics of every tensor a pruned consumer reads (one streamed run of the unpruned model)."""
    from onnxopt.passes.prune.groups import channel_axes

    names = []
    for cut in result.an.cuts:
        tensor = cut.node.inputs[0]
        arr = result.an.get(tensor)
        if cut.role == "in" and arr is not None and len(channel_axes(arr)) == 1 and tensor.name not in names:
            names.append(tensor.name)
    model = _model_of(result)
    sums: dict[str, np.ndarray] = {}
    signed: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    count = 0
    for values in stream(model, names, data):
        count += 1
        for name, value in values.items():
            axis = channel_axes(result.an.atoms[name])[0]
            rows = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1).astype(np.float64)
            sums[name] = sums.get(name, 0) + np.abs(rows).mean(axis=1)
            signed[name] = signed.get(name, 0) + rows.mean(axis=1)
            squares[name] = squares.get(name, 0) + np.square(rows).mean(axis=1)
    count = max(count, 1)
    return {name: ChannelStats(result.an.atoms[name].reshape(-1), total / count, signed[name] / count,
                               np.maximum(squares[name] / count - np.square(signed[name] / count), 0.0))
            for name, total in sums.items()}


def _model_of(result) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    return gs.export_onnx(result.graph.copy(), do_type_check=False)
