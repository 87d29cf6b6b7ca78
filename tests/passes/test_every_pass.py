"""Every registered pass, with its default options, on real models: valid, runs, same interface.

New passes are picked up from the registry, so none can skip this check.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.data import load_data
from onnxopt.evaluate import run
from onnxopt.model import input_specs, output_specs
from onnxopt.passes import PassContext, build, registered
from tests.conftest import CORPUS_SHAPES, DIGITS_EVAL, load_corpus

MODELS = ["digits", "ppocr_cls"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("pass_name", sorted(registered()))
def test_every_pass_keeps_a_valid_running_model(pass_name, model_name):
    shapes = CORPUS_SHAPES.get(model_name)
    model = load_corpus(model_name)
    calib = str(DIGITS_EVAL) if model_name == "digits" else "synthetic:n=16,seed=0"
    data = load_data(calib, model, shapes=shapes, limit=96)
    result, records = build(pass_name).run(model, PassContext(data=data, shapes=shapes))
    onnx.checker.check_model(result, full_check=True)
    assert [(s.name, s.dtype) for s in input_specs(result)] == [(s.name, s.dtype) for s in input_specs(model)]
    assert [s.name for s in output_specs(result)] == [s.name for s in output_specs(model)]
    sample = data.take(4)
    expected, actual = run(model, sample), run(result, sample)
    for name, want in expected.items():
        assert actual[name].shape == want.shape and np.isfinite(actual[name]).all()
    assert records[0].name == pass_name and records[0].after.nodes > 0
