"""Unstructured weight sparsity: magnitude pruning to a level, or the N:M pattern (2:4 for sparse
tensor cores on Ampere and newer, used by TensorRT).

Only Conv / ConvTranspose / Gemm / MatMul weights are touched. N:M groups run along the input
(reduction) dimension, as sparse tensor cores expect: for Conv ``[O, I, kh, kw]`` the groups are
taken over I (per output channel and kernel position); for Gemm/MatMul over K. A layer whose
reduction size is not a multiple of M is left dense and reported.

Dense CPU kernels do not get faster from zeros; what shrinks is the compressed (zip) size, and
what speeds up needs a runtime with sparse kernels.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import onnx
from pydantic import Field

from onnxopt.errors import ConfigError
from onnxopt.passes.base import Choice, Pass, PassConfig, PassContext, Range, register
from onnxopt.passes.graph import const_value, to_graph, to_model

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _reduction_axis(node, w: np.ndarray) -> int | None:
    if node.op == "Conv":
        return 1
    if node.op == "ConvTranspose":
        return 0
    if node.op == "Gemm":
        return 1 if int(node.attrs.get("transB", 0)) else 0
    return 0 if w.ndim == 2 else None


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the largest ``1 - sparsity`` of |w| (ties broken by position, so it is deterministic)."""
    count = int(round(sparsity * w.size))
    if count <= 0:
        return np.ones(w.shape, dtype=bool)
    order = np.argsort(np.abs(w).reshape(-1), kind="stable")
    mask = np.ones(w.size, dtype=bool)
    mask[order[:count]] = False
    return mask.reshape(w.shape)


def nm_mask(w: np.ndarray, axis: int, n: int, m: int) -> np.ndarray | None:
    """Keep the ``n`` largest of every ``m`` consecutive weights along ``axis``; None if it does not divide."""
    if w.shape[axis] % m:
        return None
    moved = np.moveaxis(np.abs(w), axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def zipped_size(graph) -> int:
    """Bytes of all constant weights after zlib (what a sparse model saves on disk or over the wire)."""
    import onnx_graphsurgeon as gs

    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.values.dtype.kind == "f":
            total += len(zlib.compress(np.ascontiguousarray(tensor.values).tobytes(), 6))
    return total


def sparsify_graph(graph, mode: str, sparsity: float, n: int, m: int, min_size: int) -> list[dict]:
    """Zero weights in place (new constants: weights may be shared); returns per-layer sparsity."""
    import onnx_graphsurgeon as gs

    layers = []
    taken = set(graph.tensors().keys())
    for node in graph.nodes:
        if node.op not in WEIGHT_OPS or len(node.inputs) < 2:
            continue
        w = const_value(node.inputs[1])
        name = node.name or node.outputs[0].name
        if w is None or w.dtype.kind != "f" or w.size < min_size:
            continue
        if mode == "nm":
            axis = _reduction_axis(node, w)
            mask = None if axis is None else nm_mask(w, axis, n, m)
            if mask is None:
                layers.append({"layer": name, "sparsity": float(np.mean(w == 0)), "skipped": f"not {n}:{m}-divisible"})
                continue
        else:
            mask = magnitude_mask(w, sparsity)
        new = np.where(mask, w, np.zeros((), dtype=w.dtype))
        label, index = f"{node.inputs[1].name}_sparse", 1
        while label in taken:
            label, index = f"{node.inputs[1].name}_sparse_{index}", index + 1
        taken.add(label)
        node.inputs[1] = gs.Constant(label, new)
        layers.append({"layer": name, "sparsity": round(float(np.mean(new == 0)), 4)})
    return layers


class SparsifyConfig(PassConfig):
    mode: Literal["magnitude", "nm"] = "magnitude"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    min_size: int = Field(1024, ge=1)


@register
class Sparsify(Pass):
    """Zero single weights: magnitude pruning to ``sparsity``, or the N:M pattern (2:4 by default).

    Example: ``sparsify:sparsity=0.7``; ``sparsify:mode=nm,n=2,m=4`` for sparse tensor cores.
    Dense CPU kernels do not get faster from it; the zip size shrinks.
    """

    name = "sparsify"
    Config = SparsifyConfig
    tunable = {"sparsity": Range(0.0, 0.9), "mode": Choice(("magnitude", "nm"))}

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        cfg: SparsifyConfig = self.config  # type: ignore[assignment]
        if cfg.mode == "nm" and cfg.n >= cfg.m:
            raise ConfigError(f"sparsify: n={cfg.n} must be below m={cfg.m}", "e.g. n=2,m=4")
        if cfg.mode == "magnitude" and cfg.sparsity == 0.0:
            return model
        graph = to_graph(model)
        before = zipped_size(graph)
        layers = sparsify_graph(graph, cfg.mode, cfg.sparsity, cfg.n, cfg.m, cfg.min_size)
        after = zipped_size(graph)
        ctx.details.update({"layers": layers, "zip_bytes_before": before, "zip_bytes_after": after})
        done = [item for item in layers if "skipped" not in item]
        mean = sum(item["sparsity"] for item in done) / len(done) if done else 0.0
        ctx.note(f"{len(done)} layer(s) at mean sparsity {mean:.0%}; zipped weights {before / 2**20:.2f} -> "
                 f"{after / 2**20:.2f} MiB")
        ctx.note("dense CPU kernels do not run faster on zeros: the gain is the compressed size, and speed "
                 "only with a sparse runtime (e.g. TensorRT 2:4 on Ampere+)")
        return to_model(graph, like=model)
