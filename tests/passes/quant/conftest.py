"""Shared fixtures: the corpus models (cached by onnxopt.zoo) with realistic data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from onnxopt.data import Dataset  # noqa: E402
from onnxopt.evaluate import run  # noqa: E402
from onnxopt.model import fix_input_shapes  # noqa: E402
from onnxopt.passes.quant.prepare import negative_dims_to_symbolic  # noqa: E402
from onnxopt.zoo import corpus  # noqa: E402
from tests.corpus_data import cls_inputs, det_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def digits() -> tuple[onnx.ModelProto, Dataset, Dataset]:
    """The digits CNN, a calibration split (first 150) and a held-out eval split (last 300)."""
    arrays = np.load(REPO / "models" / "digits_eval.npz")
    x, y = arrays["input"].astype(np.float32), arrays["labels"]
    calib = Dataset({"input": x[:150]}, y[:150], "digits calib split")
    held_out = Dataset({"input": x[150:]}, y[150:], "digits held-out split")
    return corpus()["digits"](), calib, held_out


@pytest.fixture(scope="session")
def ppocr_det() -> tuple[onnx.ModelProto, Dataset]:
    model = fix_input_shapes(corpus()["ppocr_det"](), {"x": [1, 3, 320, 320]})
    return model, Dataset({"x": det_inputs(8)}, None, "text pages")


@pytest.fixture(scope="session")
def ppocr_cls() -> tuple[onnx.ModelProto, Dataset]:
    model = corpus()["ppocr_cls"]()
    negative_dims_to_symbolic(model)  # its input is [-1, 3, ?, ?]
    return model, Dataset({"x": cls_inputs(16)}, None, "text lines")


def accuracy(model: onnx.ModelProto, data: Dataset) -> float:
    logits = next(iter(run(model, data).values()))
    return float(np.mean(logits.argmax(axis=1) == data.labels))
