"""Handlers for ops that move channels around: Concat, Split, Slice, Flatten/Reshape/Squeeze/
Unsqueeze, Transpose, Resize/Upsample, Pad and Shape.

A reshape is mapped block by block: input and output dims are split into the smallest blocks whose
sizes match. A block that merges a channel axis with others (Flatten into a Gemm) maps channel c
to its run of H*W features; a block that splits a channel axis (the first half of a channel
shuffle) ties every position to the same index along the largest new axis, so the cut stays
rectangular. Anything else involving channels is pinned.
"""

from __future__ import annotations

import numpy as np

from onnxopt.passes.graph import const_value
from onnxopt.passes.prune.groups import FIXED, Analysis, channel_axes, handles, is_empty


def _new_const(an: Analysis, stem: str, value: np.ndarray):
    import onnx_graphsurgeon as gs

    taken = an.graph.tensors().keys()
    name, index = f"{stem}_pruned", 1
    while name in taken:
        name, index = f"{stem}_pruned_{index}", index + 1
    return gs.Constant(name, np.ascontiguousarray(value))


# ---------------------------------------------------------------- Concat / Split / Slice


@handles("Concat")
def concat(node, an: Analysis) -> None:
    arrays = [an.get(t) for t in node.inputs]
    if all(a is None for a in arrays):
        return
    rank = an.rank(node.outputs[0])
    shapes = [an.shape(t) for t in node.inputs]
    if rank is None or any(s is None for s in shapes):
        return an.pin_inputs(node, f"Concat {node.name!r}: shapes unknown")
    axis = int(node.attrs.get("axis", 0)) % rank
    if not any(a is not None and a.shape[axis] > 1 for a in arrays):  # concat along a non-channel axis
        carried = [a for a in arrays if a is not None]
        if len(carried) != len(arrays) or any(a.shape != carried[0].shape for a in carried):
            return an.pin_inputs(node, f"Concat {node.name!r} joins channel tensors with others off-axis")
        result = carried[0]
        for other in carried[1:]:
            result = an.union_arrays(result, other, node)
        return an.set(node.outputs[0], result, node)
    parts = []
    for arr, shape in zip(arrays, shapes, strict=True):
        if not isinstance(shape[axis], int):
            return an.pin_inputs(node, f"Concat {node.name!r}: segment size unknown")
        if arr is None:
            arr = np.full([shape[axis] if i == axis else 1 for i in range(rank)], FIXED, dtype=np.int64)
        parts.append(arr)
    others = {tuple(s for i, s in enumerate(p.shape) if i != axis) for p in parts}
    if len(others) != 1:
        return an.pin_inputs(node, f"Concat {node.name!r} joins tensors with channels on different axes")
    an.set(node.outputs[0], np.concatenate(parts, axis=axis), node)


@handles("Split")
def split(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    axis = int(node.attrs.get("axis", 0)) % arr.ndim
    if arr.shape[axis] == 1:
        for out in node.outputs:
            an.set(out, arr, node)
        return
    sizes = [an.shape(out)[axis] if an.shape(out) else None for out in node.outputs]
    if any(not isinstance(s, int) for s in sizes) or sum(sizes) != arr.shape[axis]:
        return an.pin_inputs(node, f"Split {node.name!r}: segment sizes unknown")
    bounds = np.cumsum([0, *sizes])
    segments = [np.take(arr, np.arange(a, b), axis=axis) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for out, seg in zip(node.outputs, segments, strict=True):
        an.set(out, seg, node)

    def fix(plan) -> None:
        new = np.array([plan.mask(seg).any(axis=tuple(i for i in range(seg.ndim) if i != axis)).sum()
                        for seg in segments], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if an.opset < 13:
            node.attrs["split"] = [int(v) for v in new]
        elif len(node.inputs) > 1 and not is_empty(node.inputs[1]):
            node.inputs[1] = _new_const(an, f"{node.name}_split", new)
        else:
            node.inputs.append(_new_const(an, f"{node.name}_split", new))

    an.fixups.append(fix)


def _slice_params(node, an: Analysis) -> tuple | None:
    if an.opset < 10:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
        return None if starts is None or ends is None else (list(starts), list(ends), axes, steps)
    values = [None if i >= len(node.inputs) or is_empty(node.inputs[i]) else const_value(node.inputs[i])
              for i in range(1, 5)]
    for i, v in enumerate(values):
        present = i + 1 < len(node.inputs) and not is_empty(node.inputs[i + 1])
        if present and v is None:
            return None
    starts, ends, axes, steps = (None if v is None else v.reshape(-1).tolist() for v in values)
    return starts, ends, axes, steps


@handles("Slice")
def slice_(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    params = _slice_params(node, an)
    shape = an.shape(node.inputs[0])
    if params is None or shape is None:
        return an.pin_inputs(node, f"Slice {node.name!r}: bounds not constant")
    starts, ends, axes, steps = params
    axes = [int(a) % arr.ndim for a in (axes if axes is not None else range(len(starts)))]
    steps = steps if steps is not None else [1] * len(axes)
    out, touched = arr, []
    for k, axis in enumerate(axes):
        if arr.shape[axis] == 1:
            continue
        lo, hi, step = slice(int(starts[k]), int(ends[k]), int(steps[k])).indices(arr.shape[axis])
        if step != 1 or hi <= lo:
            return an.pin_inputs(node, f"Slice {node.name!r} strides over channels")
        out = np.take(out, np.arange(lo, hi), axis=axis)
        touched.append((k, axis, lo, hi))
    an.set(node.outputs[0], out, node)
    if touched:
        an.fixups.append(lambda plan: _fix_slice(node, an, arr, touched, plan))


def _fix_slice(node, an: Analysis, arr: np.ndarray, touched: list, plan) -> None:
    starts, ends = list(_slice_params(node, an)[0]), list(_slice_params(node, an)[1])
    for k, axis, lo, hi in touched:
        kept = plan.mask(arr).any(axis=tuple(i for i in range(arr.ndim) if i != axis))
        starts[k] = int(kept[:lo].sum())
        ends[k] = starts[k] + int(kept[lo:hi].sum())
    if an.opset < 10:
        node.attrs["starts"], node.attrs["ends"] = starts, ends
    else:
        node.inputs[1] = _new_const(an, f"{node.name}_starts", np.array(starts, dtype=np.int64))
        node.inputs[2] = _new_const(an, f"{node.name}_ends", np.array(ends, dtype=np.int64))


# ---------------------------------------------------------------- reshapes


def _blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Smallest matching blocks of input axes and output axes (size-1 axes are left out)."""
    ia = [i for i, d in enumerate(a) if d != 1]
    ib = [j for j, d in enumerate(b) if d != 1]
    blocks, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        block_a, block_b = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(ia):
                block_a.append(ia[i])
                pa, i = pa * a[ia[i]], i + 1
            elif pb < pa and j < len(ib):
                block_b.append(ib[j])
                pb, j = pb * b[ib[j]], j + 1
            else:
                return None
        blocks.append((block_a, block_b))
    return blocks if i == len(ia) and j == len(ib) else None


def map_reshape(node, an: Analysis, arr: np.ndarray, out_tensor) -> tuple[np.ndarray, list[int]] | str:
    """The output atom array of a reshape and its channel axes, or a reason it cannot be mapped."""
    a, b = an.known_shape(node.inputs[0]), an.known_shape(out_tensor)
    if a is None or b is None:
        return "shapes unknown"
    blocks = _blocks(a, b)
    if blocks is None:
        return "dims do not line up"
    axes = set(channel_axes(arr))
    hit = [(ba, bb) for ba, bb in blocks if axes & set(ba)]
    if len(hit) != 1 or not axes <= set(hit[0][0]):
        return "channels spread over several blocks"
    block_a, block_b = hit[0]
    sub = np.broadcast_to(arr.reshape([arr.shape[i] for i in block_a]), [a[i] for i in block_a])
    mapped = sub.reshape([b[j] for j in block_b])
    if len(block_b) > 1:
        if len(block_a) > 1:
            return "reshape both merges and splits channels"
        keep_axis = int(np.argmax(mapped.shape))  # ties make the cut rectangular: only this axis shrinks
        moved = np.moveaxis(mapped, keep_axis, -1).reshape(-1, mapped.shape[keep_axis])
        for row in moved[1:]:
            an.union_arrays(moved[0], row, node)
    out = mapped.reshape([b[j] if j in block_b else 1 for j in range(len(b))])
    return out, list(block_b)


@handles("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    shape_value = const_value(node.inputs[1]) if node.op == "Reshape" else None
    if node.op == "Reshape" and (shape_value is None or int(node.attrs.get("allowzero", 0))):
        return an.pin_inputs(node, f"Reshape {node.name!r}: target shape is computed at run time")
    mapped = map_reshape(node, an, arr, node.outputs[0])
    if isinstance(mapped, str):
        return an.pin_inputs(node, f"{node.op} {node.name!r}: {mapped}")
    out, out_axes = mapped
    an.set(node.outputs[0], out, node)
    if node.op == "Reshape":
        an.fixups.append(lambda plan: _fix_reshape(node, an, out, out_axes, shape_value, plan))


def _fix_reshape(node, an: Analysis, out: np.ndarray, out_axes: list[int], target: np.ndarray, plan) -> None:
    new = target.astype(np.int64).reshape(-1).copy()
    mask = plan.mask(out)
    for axis in out_axes:
        if new[axis] != -1:
            new[axis] = int(mask.any(axis=tuple(i for i in range(out.ndim) if i != axis)).sum())
    if len(out_axes) == 1 and new[out_axes[0]] != -1:
        new[out_axes[0]] = int(mask.sum())
    node.inputs[1] = _new_const(an, f"{node.name}_shape", new)


@handles("Transpose")
def transpose(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    perm = node.attrs.get("perm") or list(range(arr.ndim))[::-1]
    an.set(node.outputs[0], arr.transpose([int(p) for p in perm]), node)


# ---------------------------------------------------------------- Resize / Pad / Shape


@handles("Resize", "Upsample")
def resize(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    axes = channel_axes(arr)
    scales_at = 1 if (node.op == "Upsample" or an.opset < 11) else 2
    scales = node.attrs.get("scales")
    if scales is None and scales_at < len(node.inputs) and not is_empty(node.inputs[scales_at]):
        value = const_value(node.inputs[scales_at])
        scales = None if value is None else value.reshape(-1).tolist()
    sizes_in = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 and not is_empty(node.inputs[3]) \
        else None
    if node.attrs.get("axes") is not None:
        return an.pin_inputs(node, f"Resize {node.name!r}: axes attribute not supported")
    if sizes_in is not None:
        sizes = const_value(sizes_in)
        if sizes is None:
            return an.pin_inputs(node, f"Resize {node.name!r}: output sizes are computed at run time")
        an.fixups.append(lambda plan: _fix_sizes(node, an, arr, axes, sizes, plan))
    elif scales is None or any(float(scales[a]) != 1.0 for a in axes if a < len(scales)) or len(scales) == 0:
        return an.pin_inputs(node, f"{node.op} {node.name!r} scales the channel axis or its scales are computed")
    an.set(node.outputs[0], arr, node)


def _fix_sizes(node, an: Analysis, arr: np.ndarray, axes: list[int], sizes: np.ndarray, plan) -> None:
    new = sizes.astype(np.int64).reshape(-1).copy()
    for axis in axes:
        new[axis] = int(plan.mask(arr).any(axis=tuple(i for i in range(arr.ndim) if i != axis)).sum())
    node.inputs[3] = _new_const(an, f"{node.name}_sizes", new)


@handles("Pad")
def pad(node, an: Analysis) -> None:
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        value = const_value(node.inputs[1])
        pads = None if value is None else value.reshape(-1).tolist()
    has_axes = len(node.inputs) > 3 and not is_empty(node.inputs[3])
    if pads is None or has_axes:
        return an.pin_inputs(node, f"Pad {node.name!r}: pads not constant")
    rank = arr.ndim
    if any(pads[a] or pads[a + rank] for a in channel_axes(arr)):
        return an.pin_inputs(node, f"Pad {node.name!r} pads the channel axis")
    an.set(node.outputs[0], arr, node)


@handles("Shape")
def shape(node, an: Analysis) -> None:
    """Shape is fine when every reader only picks non-channel dims (Gather/Slice, through Cast)."""
    arr = an.get(node.inputs[0])
    if arr is None:
        return
    start = int(node.attrs.get("start", 0)) % arr.ndim
    channel = {a - start for a in channel_axes(arr)}
    if not _reads_avoid(node.outputs[0], channel, an, arr.ndim - start):
        an.pin_inputs(node, f"Shape {node.name!r}: the channel count feeds a computation")


def _reads_avoid(tensor, channel: set[int], an: Analysis, length: int, depth: int = 0) -> bool:
    if tensor in an.graph.outputs or depth > 4:
        return False
    for reader in tensor.outputs:
        if reader.op == "Cast":
            ok = _reads_avoid(reader.outputs[0], channel, an, length, depth + 1)
        elif reader.op == "Gather" and reader.inputs[0] is tensor:
            idx = const_value(reader.inputs[1])
            ok = idx is not None and not {int(i) % length for i in idx.reshape(-1)} & channel
        elif reader.op == "Slice" and reader.inputs[0] is tensor:
            params = _slice_params(reader, an)
            if params is None or len(params[0]) != 1:
                return False
            lo, hi, step = slice(int(params[0][0]), int(params[1][0]), 1).indices(length)
            ok = not set(range(lo, hi)) & channel
        else:
            ok = False
        if not ok:
            return False
    return True
