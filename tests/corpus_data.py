"""Inputs that look like what the corpus models were trained on, so fidelity numbers mean something.

PP-OCR det/cls on N(0, 1) noise output an all-zero text map: any quantized model "agrees" or
"disagrees" by rounding. These draw dark glyph-like blocks in lines on a light page, normalized
the way PaddleOCR does (det: ImageNet mean/std; cls: (x/255 - 0.5) / 0.5).
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def text_pages(n: int, height: int, width: int, seed: int = 0, lines: int | None = None) -> np.ndarray:
    """``n`` grey pages [n, 3, H, W] in 0..255 with rows of dark glyph blocks."""
    rng = np.random.default_rng(seed)
    pages = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        page = np.full((height, width), rng.uniform(200, 250), np.float32)
        rows = lines or max(1, height // 40)
        for r in range(rows):
            glyph_h = int(rng.integers(max(4, height // 16), max(6, height // 6)))
            top = int(rng.integers(0, max(1, height - glyph_h)))
            x = int(rng.integers(0, width // 8 + 1))
            while x < width - glyph_h:
                w = int(rng.integers(glyph_h // 2, glyph_h + 1))
                glyph = rng.random((glyph_h, w)) < 0.45
                page[top:top + glyph_h, x:x + w][glyph] = rng.uniform(0, 60)
                x += w + int(rng.integers(1, glyph_h // 2 + 2))
            _ = r
        noise = rng.normal(0, 4, (3, height, width)).astype(np.float32)
        pages[i] = np.clip(page[None] + noise, 0, 255)
    return pages


def det_inputs(n: int, size: int = 320, seed: int = 0) -> np.ndarray:
    return ((text_pages(n, size, size, seed) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def cls_inputs(n: int, seed: int = 0) -> np.ndarray:
    pages = text_pages(n, 48, 192, seed, lines=1)
    pages[1::2] = pages[1::2, :, ::-1, ::-1]  # half upside down: the classifier's two classes
    return ((pages / 255.0 - 0.5) / 0.5).astype(np.float32)
