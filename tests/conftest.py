"""Shared fixtures: the test corpus (project model, PP-OCR from a PyPI wheel, onnx light zoo)."""

from __future__ import annotations

import functools
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits_cnn.onnx"
DIGITS_EVAL = ROOT / "models" / "digits_eval.npz"

# shapes that make every symbolic dim concrete, for MACs and synthetic inputs (small, for speed)
CORPUS_SHAPES = {"ppocr_det": {"x": [1, 3, 320, 320]}, "ppocr_cls": {"x": [1, 3, 48, 192]}}


def corpus_names() -> list[str]:
    from onnxopt import zoo

    return list(zoo.corpus())


@functools.cache
def _corpus_bytes(name: str) -> bytes:
    from onnxopt import zoo

    return zoo.corpus()[name]().SerializeToString()


def load_corpus(name: str) -> onnx.ModelProto:
    """A fresh copy of a corpus model (cached as bytes: tests may mutate what they get)."""
    model = onnx.ModelProto()
    model.ParseFromString(_corpus_bytes(name))
    return model
