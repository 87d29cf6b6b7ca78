"""GPTQ weight rounding: the integer codes chosen against the layer's inputs, not one weight at a time.

Rounding every weight to its nearest grid point ignores that a layer's output is ``W @ x``: the
errors of weights that see correlated inputs add up. GPTQ (Frantar et al., 2022) rounds one input
column at a time and spreads that column's rounding error over the columns not rounded yet, weighted
by the inverse of the inputs' second moment ``H = X^T X`` (the layer's output error is
``(W - Q) H (W - Q)^T``). It needs calibration inputs and no training.

Here it never changes onnxruntime's scales and zero points: onnxruntime quantizes as usual (static
QDQ, or ``MatMulNBits`` blocks for int4), then :meth:`Rounder.refine_qdq` / :meth:`Rounder.refine_nbits`
replace the integer codes with GPTQ's on the same grid. Every other part of the model (bias scales, fused
kernels, the file format) stays exactly what onnxruntime wrote.

A conv is a matrix product over its im2col patches: weight rows are output channels, columns are
(input channel, ky, kx); a grouped or depthwise conv is one such problem per group. ConvTranspose
and convs that are not 2-D keep nearest rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.passes.im2col import conv_patches, output_size

ROWS_PER_SAMPLE = 4096  # input rows (conv output positions) drawn per sample: H needs no more
DAMPING = (0.01, 0.1, 1.0)  # of H's mean diagonal, added to its diagonal; chosen per layer by
#   cross-validation: 0.01 is GPTQ's usual, but with a few hundred calibration rows an input that is
#   rarely non-zero gets a tiny diagonal, and GPTQ dumps other columns' error on its weights
#   (codes move many steps from the nearest). More damping pulls GPTQ towards nearest rounding.
BLOCK = 128  # columns rounded before the rest of the matrix is updated (lazy batch updates)


@dataclass(frozen=True)
class Layer:
    """A weighted node seen as ``groups`` matrix products ``W[g] (rows x cols) @ x[g]``."""

    node: str
    weight: str
    op: str
    attrs: dict
    shape: tuple[int, ...]

    @property
    def groups(self) -> int:
        return int(self.attrs.get("group", 1)) if self.op == "Conv" else 1

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as [groups, rows (outputs), cols (inputs)]."""
        if self.op == "Conv":
            return w.reshape(self.groups, w.shape[0] // self.groups, -1)
        if self.op == "Gemm" and not self.attrs.get("transB", 0):
            return w.T[None]
        if self.op == "MatMul":
            return w.T[None]
        return w[None]

    def weight_of(self, matrix: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`matrix`."""
        if self.op == "Conv":
            return matrix.reshape(self.shape)
        if (self.op == "Gemm" and not self.attrs.get("transB", 0)) or self.op == "MatMul":
            return matrix[0].T
        return matrix[0]

    def output_axis(self) -> int:
        """The weight axis that indexes outputs (the rows of :meth:`matrix`)."""
        if self.op == "Conv" or (self.op == "Gemm" and self.attrs.get("transB", 0)):
            return 0
        return 1


def layers(model: onnx.ModelProto, names: Iterable[str] | None = None) -> dict[str, Layer]:
    """The Conv (2-D), Gemm (transA=0) and MatMul nodes of ``model`` with a constant float weight."""
    inits = {t.name: t for t in model.graph.initializer}
    wanted = None if names is None else set(names)
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or not node.name:
            continue
        if wanted is not None and node.name not in wanted:
            continue
        tensor = inits.get(node.input[1])
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(tensor.dims)
        if (node.op_type == "Conv" and rank != 4) or (node.op_type != "Conv" and rank != 2) or attrs.get("transA", 0):
            continue
        found[node.name] = Layer(node.name, node.input[1], node.op_type, attrs, tuple(tensor.dims))
    return found


@dataclass(frozen=True)
class Moments:
    """A layer's input second moments ``X^T X / rows`` ([groups, cols, cols]): over all calibration
    samples, and over the even and the odd ones apart (``second`` is None with one sample); and the
    fewest input rows either half has."""

    full: np.ndarray
    first: np.ndarray
    second: np.ndarray | None
    rows: int


def input_moments(model: onnx.ModelProto, data, wanted: Mapping[str, Layer], *, samples: int,
                  seed: int = 0) -> dict[str, Moments]:
    """:class:`Moments` of each layer's input rows, by node name, from one streamed run of ``model``
    over ``samples`` samples of ``data`` (ROWS_PER_SAMPLE rows drawn per sample)."""
    from onnxopt.passes.prune.activations import stream

    if not wanted:
        return {}
    first_input = {n.name: n.input[0] for n in model.graph.node}
    inputs = {name: first_input[name] for name in wanted}
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    rng = np.random.default_rng(seed)
    subset = data.take(samples) if samples < len(data) else data
    for index, values in enumerate(stream(model, sorted(set(inputs.values())), subset)):
        for name, layer in wanted.items():
            rows = _input_rows(layer, np.asarray(values[inputs[name]], np.float32), rng)
            if rows is None:
                continue
            key = (name, index % 2)
            grams = np.matmul(rows.transpose(1, 2, 0), rows.transpose(1, 0, 2)).astype(np.float64)
            sums[key] = grams if key not in sums else sums[key] + grams
            counts[key] = counts.get(key, 0) + rows.shape[0]
    found = {}
    for name in wanted:
        if (name, 0) not in sums:
            continue
        second = sums.get((name, 1))
        total = sums[(name, 0)] + (0 if second is None else second)
        found[name] = Moments(total / (counts[(name, 0)] + counts.get((name, 1), 0)),
                              sums[(name, 0)] / counts[(name, 0)],
                              None if second is None else second / counts[(name, 1)],
                              min(counts[(name, 0)], counts.get((name, 1), 0)))
    return found


def _input_rows(layer: Layer, x: np.ndarray, rng) -> np.ndarray | None:
    """[rows, groups, cols] input rows of ``layer`` for one sample's input ``x``."""
    if layer.op == "Conv":
        if x.ndim != 4:
            return None
        oh, ow = output_size(layer.attrs, layer.shape, x.shape)
        total = x.shape[0] * oh * ow
        flat = rng.choice(total, size=min(ROWS_PER_SAMPLE, total), replace=False)
        bn, rem = np.divmod(flat, oh * ow)
        rows = conv_patches(layer.attrs, x, layer.shape, (bn, *np.divmod(rem, ow)))
        return rows.reshape(len(flat), layer.groups, -1)
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) > ROWS_PER_SAMPLE:
        rows = rows[rng.choice(len(rows), size=ROWS_PER_SAMPLE, replace=False)]
    return rows[:, None, :]


def gptq_codes(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero: np.ndarray, qmin: int,
               qmax: int, group_size: int | None = None, damp: float = DAMPING[0]) -> np.ndarray:
    """Integer codes for ``weight`` [groups, rows, cols] on the fixed grid ``(code - zero) * scale``.

    ``hessian`` is [groups, cols, cols]; ``scale`` and ``zero`` are [groups, rows, n] with n = 1 or
    one per ``group_size`` columns. Returns int64 codes in [qmin, qmax], the shape of ``weight``."""
    w = np.array(weight, np.float64)
    h = np.array(hessian, np.float64)
    groups, rows, cols = w.shape
    column_group = (np.arange(cols) // group_size) if group_size else np.zeros(cols, int)
    safe = np.where(scale == 0, 1.0, scale).astype(np.float64)
    zero = np.asarray(zero, np.float64)
    dead = np.diagonal(h, axis1=1, axis2=2) == 0
    for g in range(groups):  # an input that is always zero: its weights do not matter
        h[g, dead[g], dead[g]] = 1.0
        w[g][:, dead[g]] = 0.0
    h_inv = _inverse_cholesky(h, damp)
    codes = np.zeros(w.shape, np.int64)
    for start in range(0, cols, BLOCK):
        stop = min(start + BLOCK, cols)
        block = w[:, :, start:stop].copy()
        errors = np.zeros_like(block)
        for i in range(stop - start):
            col = start + i
            s, z = safe[:, :, column_group[col]], zero[:, :, column_group[col]]
            q = np.clip(np.rint(block[:, :, i] / s) + z, qmin, qmax)
            q = np.where(scale[:, :, column_group[col]] == 0, z, q)
            codes[:, :, col] = q
            err = (block[:, :, i] - (q - z) * s) / h_inv[:, col, col][:, None]
            block[:, :, i:] -= err[:, :, None] * h_inv[:, None, col, col:stop]
            errors[:, :, i] = err
        w[:, :, stop:] -= errors @ h_inv[:, start:stop, stop:]
    return codes


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of H^-1 per group, ``damp`` (raised until it factors) x the mean
    diagonal added to the diagonal."""
    mean_diag = np.mean(np.diagonal(h, axis1=1, axis2=2), axis=1)
    eye = np.eye(h.shape[1])
    for factor in (damp, damp * 10, damp * 100):
        try:
            return np.linalg.cholesky(np.linalg.inv(h + factor * mean_diag[:, None, None] * eye)).transpose(0, 2, 1)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("input Hessian is not positive definite even with damping 1.0")


def output_error(weight: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """Layer output MSE ``tr((W - Q) H (W - Q)^T)`` summed over groups (weights as [g, rows, cols])."""
    diff = np.asarray(weight, np.float64) - np.asarray(approx, np.float64)
    return float(np.sum(np.matmul(diff, hessian) * diff))  # matmul: einsum's three-operand path is far slower


@dataclass
class Refined:
    """What a refinement did: weights re-rounded, and the summed layer output error (on the
    calibration inputs) with nearest rounding and with GPTQ's codes."""

    weights: int = 0
    skipped: int = 0
    not_better: int = 0
    too_large: int = 0
    error_nearest: float = 0.0
    error_gptq: float = 0.0

    def add(self, other: Refined) -> None:
        self.weights += other.weights
        self.skipped += other.skipped
        self.not_better += other.not_better
        self.too_large += other.too_large
        self.error_nearest += other.error_nearest
        self.error_gptq += other.error_gptq

    def describe(self) -> str:
        if not self.weights:
            text = "GPTQ rounding on no weight"
        else:
            text = (f"GPTQ rounding on {self.weights} weight(s): layer output error "
                    f"{self.error_nearest / max(self.error_gptq, 1e-300):.2f}x lower than nearest rounding on the "
                    "calibration inputs")
        if self.not_better:
            text += (f"; {self.not_better} kept nearest rounding: fewer input rows than weight columns in half the "
                     "samples (layers that see one row per sample, such as heads and convs on pooled inputs, need "
                     "more samples than inputs), or GPTQ fitted on half did not beat it on the other half")
        if self.too_large:
            text += f"; {self.too_large} kept nearest rounding: their input moments exceed the memory budget"
        return text + (f"; {self.skipped} kept nearest rounding (grid not recognised)" if self.skipped else "")


def _choose(layer: Layer, w: np.ndarray, old: np.ndarray, scale: np.ndarray, zero: np.ndarray, moments: Moments,
            bounds: tuple[int, int], group_size: int | None, report: Refined) -> np.ndarray | None:
    """GPTQ codes (matrix layout) for one weight, with the damping (DAMPING) under which GPTQ fitted
    on the even samples does best on the odd ones. ``old`` (nearest rounding) when none beats it
    there, or when either half has fewer input rows than the weight has columns: GPTQ then fits the
    calibration set's quirks (squeeze-excite convs see one pooled row per sample, and fitting them
    costs held-out fidelity). None when onnxruntime's codes are not
    the nearest rounding on the grid we read (our reading of its format is wrong: leave them)."""
    qmin, qmax = bounds
    matrix = layer.matrix(w).astype(np.float64)
    cols = matrix.shape[2]
    column_group = (np.arange(cols) // group_size) if group_size else np.zeros(cols, int)
    s, z = scale[:, :, column_group], zero[:, :, column_group]
    nearest = np.clip(np.rint(matrix / np.where(s == 0, 1, s)) + z, qmin, qmax)
    if np.mean(np.abs(nearest - old) > 1) > 0.001:  # ties and float error may move a code by one
        report.skipped += 1
        return None
    if moments.second is None or moments.rows < matrix.shape[2]:  # H of rank < cols: GPTQ would extrapolate
        report.not_better += 1
        return old
    held_out = {damp: output_error(matrix, (gptq_codes(matrix, moments.first, scale, zero, qmin, qmax, group_size,
                                                       damp) - z) * s, moments.second) for damp in DAMPING}
    damp = min(held_out, key=held_out.get)
    if held_out[damp] >= output_error(matrix, (old - z) * s, moments.second):
        report.not_better += 1
        return old
    codes = gptq_codes(matrix, moments.full, scale, zero, qmin, qmax, group_size, damp)
    before = output_error(matrix, (old - z) * s, moments.full)
    after = output_error(matrix, (codes - z) * s, moments.full)
    report.weights += 1
    report.error_nearest += before
    report.error_gptq += min(before, after)
    return codes if after < before else old


@dataclass
class _Job:
    """One weight to re-round: its cache key, the float nodes reading it (their inputs' moments are
    pooled), how to get its codes from those moments, and where to write them."""

    key: tuple
    names: list[str]
    solve: Callable[[Moments, Refined], np.ndarray | None]
    write: Callable[[np.ndarray], None]


class Rounder:
    """GPTQ codes for the weights of one float model, on whatever grid onnxruntime gives them.

    Input moments are measured for batches of layers whose moments fit ``budget`` bytes (one
    streamed pass over the data each), used and dropped; only the codes are kept, by weight, scale
    and zero point, so re-quantizing with other nodes in float (the mixed-precision and
    latency-aware searches) costs nothing. A layer whose moments alone exceed the budget (a
    classifier head with tens of thousands of inputs, as in VGG) keeps nearest rounding and the
    report says so."""

    def __init__(self, float_model: onnx.ModelProto, data, *, samples: int, budget: int,
                 names: Iterable[str] | None = None):
        self.model, self.data, self.samples, self.budget = float_model, data, samples, budget
        self.layers = layers(float_model, names)
        self.inits = {t.name: t for t in float_model.graph.initializer}
        self.codes: dict[tuple, tuple[np.ndarray | None, Refined]] = {}

    def refine_qdq(self, qdq: onnx.ModelProto, bounds: Callable[[int], tuple[int, int]]) -> Refined:
        """Replace, in place, the integer codes of ``qdq``'s DequantizeLinear weights (quantized from
        this float model) with GPTQ's; ``bounds(data_type)`` = onnxruntime's (qmin, qmax) for a
        weight's integer type. Refining a model again only reads the cache: a cheap report."""
        inits = {t.name: t for t in qdq.graph.initializer}
        producers = {o: n for n in qdq.graph.node for o in n.output}
        readers: dict[str, list[str]] = {}
        for node in qdq.graph.node:
            dq = producers.get(node.input[1]) if node.name in self.layers and len(node.input) > 1 else None
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                readers.setdefault(dq.output[0], []).append(node.name)
        jobs = []
        for dq_out, names in readers.items():
            dq = producers[dq_out]
            layer = self.layers[names[0]]
            if any(self.layers[n].weight != layer.weight for n in names):
                continue
            tensor = inits[dq.input[0]]
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            zero_name = dq.input[2] if len(dq.input) > 2 else ""
            zero = numpy_helper.to_array(inits[zero_name]).astype(np.float64) if zero_name else np.zeros_like(scale)

            def solve(moments, report, layer=layer, tensor=tensor, dq=dq, scale=scale, zero=zero):
                return _qdq_codes(layer, self.inits, tensor, dq, scale, zero, moments, bounds(tensor.data_type),
                                  report)

            def write(codes, tensor=tensor):
                tensor.CopyFrom(numpy_helper.from_array(codes, tensor.name))
            jobs.append(_Job((dq.input[0], scale.tobytes(), zero.tobytes()), names, solve, write))
        return self._run(jobs)

    def refine_nbits(self, model: onnx.ModelProto) -> Refined:
        """Replace, in place, the 4-bit codes of ``model``'s ``MatMulNBits`` nodes with GPTQ's (same
        block scales and zero points), each matched to this float model's MatMul by its output name.
        B is [N, blocks, block_size / 2] bytes, two codes per byte, low nibble first; zero points
        (default 8) are packed the same way, per row of blocks."""
        by_output = {n.output[0]: n.name for n in self.model.graph.node if n.name in self.layers}
        inits = {t.name: t for t in model.graph.initializer}
        jobs = []
        for node in model.graph.node:
            name = by_output.get(node.output[0]) if node.op_type == "MatMulNBits" else None
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if name is None or attrs.get("bits", 4) != 4 or node.input[1] not in inits or node.input[2] not in inits:
                continue
            k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
            full = _unpack_nibbles(numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1))
            blocks = full.shape[1] // block
            scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(n, blocks)
            zero_name = node.input[3] if len(node.input) > 3 else ""
            if zero_name and (zero_name not in inits or inits[zero_name].data_type != onnx.TensorProto.UINT8):
                continue  # zero points given at run time, or in another layout
            zero = (_unpack_nibbles(numpy_helper.to_array(inits[zero_name]).reshape(n, -1))[:, :blocks]
                    if zero_name else np.full((n, blocks), 8)).astype(np.float64)
            layer = self.layers[name]

            def solve(moments, report, layer=layer, full=full, k=k, scale=scale, zero=zero, block=block):
                w = numpy_helper.to_array(self.inits[layer.weight])
                codes = _choose(layer, w, full[None, :, :k].astype(np.float64), scale[None], zero[None], moments,
                                (0, 15), block, report)
                if codes is None:
                    return None
                packed = full.copy()
                packed[:, :k] = codes[0]
                return (packed[:, 0::2] | (packed[:, 1::2] << 4)).astype(np.uint8)

            def write(codes, tensor=inits[node.input[1]]):
                tensor.CopyFrom(numpy_helper.from_array(codes.reshape(tensor.dims), tensor.name))
            jobs.append(_Job((node.input[1], scale.tobytes(), zero.tobytes()), [name], solve, write))
        return self._run(jobs)

    def _run(self, jobs: list[_Job]) -> Refined:
        missing = [j for j in jobs if j.key not in self.codes]
        for batch in self._batches(missing):
            moments = input_moments(self.model, self.data, {n: self.layers[n] for j in batch for n in j.names},
                                    samples=self.samples)
            for job in batch:
                report = Refined()
                parts = [moments[n] for n in job.names if n in moments]
                codes = job.solve(_merged(parts), report) if len(parts) == len(job.names) else None
                self.codes[job.key] = (codes, report)
        report = Refined()
        for job in jobs:
            codes, alone = self.codes[job.key]
            report.add(alone)
            if codes is not None:
                job.write(codes)
        return report

    def _bytes(self, job: _Job) -> int:
        """Peak bytes of a job's moments: two halves and their sum in float64, and the drawn rows."""
        total = 0
        for name in job.names:
            layer = self.layers[name]
            cols = int(np.prod(layer.shape[1:])) if layer.op == "Conv" else layer.shape[
                0 if layer.op == "MatMul" or not layer.attrs.get("transB", 0) else 1]
            total += 3 * 8 * layer.groups * cols * cols + 4 * ROWS_PER_SAMPLE * layer.groups * cols
        return total

    def _batches(self, jobs: list[_Job]) -> list[list[_Job]]:
        batches: list[list[_Job]] = []
        used = self.budget
        for job in jobs:
            size = self._bytes(job)
            if size > self.budget:
                self.codes[job.key] = (None, Refined(too_large=1))
                continue
            if used + size > self.budget:
                batches.append([])
                used = 0
            batches[-1].append(job)
            used += size
        return batches


def _merged(parts: list[Moments]) -> Moments:
    """The moments of a weight that several nodes read (their inputs pooled, equal weight each)."""
    if len(parts) == 1:
        return parts[0]
    seconds = [p.second for p in parts]
    return Moments(sum(p.full for p in parts) / len(parts), sum(p.first for p in parts) / len(parts),
                   None if any(x is None for x in seconds) else sum(seconds) / len(parts),
                   sum(p.rows for p in parts))


def _qdq_codes(layer, float_inits, codes_tensor, dq, scale, zero, moments, bounds, report) -> np.ndarray | None:
    old = numpy_helper.to_array(codes_tensor)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % old.ndim
    if scale.size != 1 and axis != layer.output_axis():
        return None
    w = numpy_helper.to_array(float_inits[layer.weight])
    rows = w.shape[layer.output_axis()]
    groups = layer.groups
    per_row = [np.broadcast_to(v.reshape(-1), (rows,)).reshape(groups, rows // groups, 1) for v in (scale, zero)]
    codes = _choose(layer, w, layer.matrix(old).astype(np.float64), per_row[0], per_row[1], moments, bounds, None,
                    report)
    return None if codes is None else layer.weight_of(codes).astype(old.dtype)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [rows, bytes] -> int64 [rows, 2 * bytes], low nibble first."""
    packed = packed.astype(np.int64)
    return np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
