"""Inputs that look like what the corpus models were trained on, so fidelity numbers mean something.

PP-OCR det/cls on N(0, 1) noise output an all-zero text map: any quantized model "agrees" or
"disagrees" by rounding. Det pages hold rows of dark glyph-like blocks on a light page; cls lines
are real text rendered with Pillow's bundled font (random letters and digits), half of them
upside down. Random glyph blocks look the same either way up, so on them the orientation
classifier sat near p = 0.5, where any perturbation swings its softmax (int8 cosine 0.95-1.0 per
line); on rendered text it is confident and right on every line. Normalized the way PaddleOCR does
(det: ImageNet mean/std; cls: (x/255 - 0.5) / 0.5).
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


def text_lines(n: int, height: int = 48, width: int = 192, seed: int = 0) -> np.ndarray:
    """``n`` grey lines [n, 3, H, W] in 0..255: four random words in Pillow's bundled font."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    lines = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        size = int(rng.integers(height * 9 // 16, height * 4 // 5))
        words = " ".join("".join(rng.choice(chars, int(rng.integers(2, 8)))) for _ in range(4))
        image = Image.new("L", (width, height), int(rng.uniform(200, 250)))
        ImageDraw.Draw(image).text((int(rng.integers(0, 10)), (height - size) // 2 - 2), words,
                                   fill=int(rng.uniform(0, 60)), font=ImageFont.load_default(size=size))
        noisy = np.asarray(image, np.float32) + rng.normal(0, 4, (height, width))
        lines[i] = np.clip(noisy, 0, 255)[None]
    return lines


def cls_inputs(n: int, seed: int = 0) -> np.ndarray:
    lines = text_lines(n, seed=seed)
    lines[1::2] = lines[1::2, :, ::-1, ::-1]  # half upside down: the classifier's two classes
    return ((lines / 255.0 - 0.5) / 0.5).astype(np.float32)
