"""A 2-D convolution's input as matrix rows (im2col), for the layer-wise fits that see a conv as a
matrix product: pruning's least-squares refit and GPTQ's input Hessians."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def conv_geometry(attrs: Mapping, kernel_shape: tuple, x_shape: tuple) -> tuple:
    """((k0, k1), (s0, s1), (d0, d1), pads [top, left, bottom, right]) of a Conv; ``auto_pad`` resolved."""
    k0, k1 = kernel_shape[2], kernel_shape[3]
    s0, s1 = attrs.get("strides", [1, 1])
    d0, d1 = attrs.get("dilations", [1, 1])
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        split = []
        for size, k, s, d in ((x_shape[2], k0, s0, d0), (x_shape[3], k1, s1, d1)):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            split.append((small, big) if auto == "SAME_UPPER" else (big, small))
        pads = [split[0][0], split[1][0], split[0][1], split[1][1]]
    return (k0, k1), (s0, s1), (d0, d1), pads


def output_size(attrs: Mapping, kernel_shape: tuple, x_shape: tuple) -> tuple[int, int]:
    (k0, k1), (s0, s1), (d0, d1), pads = conv_geometry(attrs, kernel_shape, x_shape)
    return ((x_shape[2] + pads[0] + pads[2] - (k0 - 1) * d0 - 1) // s0 + 1,
            (x_shape[3] + pads[1] + pads[3] - (k1 - 1) * d1 - 1) // s1 + 1)


def conv_patches(attrs: Mapping, x: np.ndarray, kernel_shape: tuple, where: tuple) -> np.ndarray:
    """im2col rows of a 2-D conv's input at output positions ``where`` = (sample, y, x) index
    arrays: one row per position, columns in the weight's (channel, ky, kx) order."""
    (k0, k1), (s0, s1), (d0, d1), pads = conv_geometry(attrs, kernel_shape, x.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    bn, oy, ox = where
    iy = oy[:, None] * s0 + np.arange(k0)[None, :] * d0
    ix = ox[:, None] * s1 + np.arange(k1)[None, :] * d1
    c = x.shape[1]
    rows = xp[bn[:, None, None, None], np.arange(c)[None, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    return rows.reshape(len(bn), -1)
