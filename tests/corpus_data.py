"""Inputs that look like what the corpus models were trained on, so fidelity numbers mean something.

PP-OCR det/cls on N(0, 1) noise output an all-zero text map: any quantized model "agrees" or
"disagrees" by rounding. Det pages and cls lines are real text rendered with Pillow's bundled
font (random letters and digits); half of the cls lines are upside down.

Both used to be rows of random glyph blocks (pixels dark with p = 0.45): salt-and-pepper texture
that no document has. On it the orientation classifier sat near p = 0.5 (blocks look the same
either way up), and det's high-frequency filters fired at ranges of 100-260 where text gives
0-20, so every 8-bit fidelity figure was an artefact (det all-int8 cosine 0.51-0.70; on rendered
pages 0.97-0.98, text-mask IoU 0.93, what the issue measured on real pages). Normalized the way
PaddleOCR does (det: ImageNet mean/std; cls: (x/255 - 0.5) / 0.5).
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def text_pages(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` grey pages [n, 3, H, W] in 0..255: lines of random words in Pillow's bundled font, of
    random sizes and indents, dark on a light page (about 10-15% of the pixels under the det's
    text map)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pages = np.empty((n, 3, height, width), np.float32)
    smallest, largest = max(8, height // 27), max(10, height // 9)
    for i in range(n):
        image = Image.new("L", (width, height), int(rng.uniform(200, 250)))
        draw = ImageDraw.Draw(image)
        top = int(rng.integers(0, smallest * 2))
        while top < height - smallest:
            size = int(rng.integers(smallest, largest))
            draw.text((int(rng.integers(0, width // 3)), top), _words(rng, int(rng.integers(1, 6))),
                      fill=int(rng.uniform(0, 60)), font=_font(size))
            top += size + int(rng.integers(smallest // 2, smallest * 3))
        pages[i] = _noisy(image, rng, colour=True)
    return pages


def det_inputs(n: int, size: int = 320, seed: int = 0) -> np.ndarray:
    return ((text_pages(n, size, size, seed) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def text_lines(n: int, height: int = 48, width: int = 192, seed: int = 0) -> np.ndarray:
    """``n`` grey lines [n, 3, H, W] in 0..255: four random words in Pillow's bundled font."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    lines = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        size = int(rng.integers(height * 9 // 16, height * 4 // 5))
        words = _words(rng, 4)
        image = Image.new("L", (width, height), int(rng.uniform(200, 250)))
        ImageDraw.Draw(image).text((int(rng.integers(0, 10)), (height - size) // 2 - 2), words,
                                   fill=int(rng.uniform(0, 60)), font=_font(size))
        lines[i] = _noisy(image, rng)
    return lines


def _words(rng: np.random.Generator, count: int) -> str:
    return " ".join("".join(rng.choice(_CHARS, int(rng.integers(2, 8)))) for _ in range(count))


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _noisy(image, rng: np.random.Generator, colour: bool = False) -> np.ndarray:
    """The grey image with a little sensor noise, in 0..255: [3, H, W] with ``colour`` (a camera's
    noise differs per channel), else [1, H, W], the same in R, G and B (a grey scan)."""
    grey = np.asarray(image, np.float32)
    shape = (3,) + grey.shape if colour else grey.shape
    return np.clip(grey + rng.normal(0, 4, shape), 0, 255).reshape((-1,) + grey.shape)


def cls_inputs(n: int, seed: int = 0) -> np.ndarray:
    lines = text_lines(n, seed=seed)
    lines[1::2] = lines[1::2, :, ::-1, ::-1]  # half upside down: the classifier's two classes
    return ((lines / 255.0 - 0.5) / 0.5).astype(np.float32)
