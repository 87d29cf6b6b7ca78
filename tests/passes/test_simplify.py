"""simplify on every corpus model: valid, smaller or equal, and numerically the same function."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.data import load_data
from onnxopt.evaluate import run
from onnxopt.model import load
from onnxopt.passes import PassContext, build
from tests.conftest import CORPUS_SHAPES, load_corpus
from tests.helpers import tiny_classifier

HEAVY = {"light_vgg19", "light_zfnet512", "light_bvlc_alexnet"}
CORPUS = ["digits", "ppocr_det", "ppocr_cls", "light_resnet50", "light_densenet121", "light_inception_v1",
          "light_inception_v2", "light_shufflenet", "light_squeezenet", "light_vgg19", "light_zfnet512",
          "light_bvlc_alexnet"]


def _logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Expose the input of a final Softmax as the output: a saturated softmax would hide errors."""
    out = model.graph.output[0]
    producer = next((n for n in model.graph.node if out.name in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        model = load(model)
        model.graph.output[0].name = producer.input[0]
        model.graph.node.remove(next(n for n in model.graph.node if n.output[0] == out.name))
        return load(model)
    return model


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in CORPUS])
def test_simplify_keeps_outputs_on_corpus(name):
    shapes = CORPUS_SHAPES.get(name)
    model = _logits(load(load_corpus(name), shapes=shapes))
    simplified, (record,) = build("simplify").run(model, PassContext(shapes=shapes))
    onnx.checker.check_model(simplified, full_check=True)
    assert record.after.nodes <= record.before.nodes
    assert record.after.macs is not None and record.before.macs in (None, record.after.macs)
    assert [o.name for o in simplified.graph.output] == [o.name for o in model.graph.output]
    data = load_data("synthetic:n=2,seed=1", model, shapes=shapes)
    expected, actual = run(model, data), run(simplified, data)
    for key, want in expected.items():
        got = actual[key]
        assert got.shape == want.shape
        # relative to the output's magnitude; float32 rounding floor for outputs in [0, 1] (sigmoid maps)
        scale = max(float(np.abs(want).max()), 0.01)
        assert float(np.abs(got - want).max()) <= 1e-4 * scale, key


def test_simplify_folds_every_affine_form():
    model = tiny_classifier()
    simplified, (record,) = build("simplify:ort=false").run(model, PassContext())
    ops = [n.op_type for n in simplified.graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops and "Add" not in ops
    assert record.details["affine_folded"] == 4  # BN, Mul, Add after the Conv, BN after the Gemm
    x = np.random.default_rng(0).normal(size=(3, 3, 12, 12)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(simplified.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_simplify_is_deterministic_on_a_real_export():
    model = load_corpus("ppocr_cls")
    first, _ = build("simplify").run(model, PassContext())
    second, _ = build("simplify").run(load_corpus("ppocr_cls"), PassContext())
    assert first.SerializeToString() == second.SerializeToString()


def test_simplify_handles_paddle_constant_weights():
    model = load_corpus("ppocr_det")
    assert any(n.op_type == "Constant" for n in model.graph.node)
    simplified, (record,) = build("simplify").run(model, PassContext(shapes=CORPUS_SHAPES["ppocr_det"]))
    assert not any(n.op_type in ("Constant", "BatchNormalization") for n in simplified.graph.node)
    assert record.after.nodes < record.before.nodes / 2
