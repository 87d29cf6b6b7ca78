"""The prune pass on every corpus model: valid, runnable, same output shapes, fewer MACs; ratio 0 is a no-op."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.data import load_data
from onnxopt.evaluate import run
from onnxopt.passes import PassContext, get_pass, run_pass
from tests.conftest import CORPUS_SHAPES, corpus_names, load_corpus

# big fully-connected heads (VGG/ZFNet/AlexNet: 100-500 MB of weights) make these slow on 2 cores
HEAVY = {"light_vgg19", "light_zfnet512", "light_bvlc_alexnet", "light_densenet121", "light_inception_v1",
         "light_inception_v2"}


def _params():
    return [pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in corpus_names()]


def _outputs(model: onnx.ModelProto, name: str) -> dict[str, np.ndarray]:
    data = load_data("synthetic:n=2,seed=1", model, shapes=CORPUS_SHAPES.get(name))
    return run(model, data)


@pytest.mark.parametrize("name", _params())
def test_prune_ratios_valid_and_cheaper(name):
    model = load_corpus(name)
    shapes = CORPUS_SHAPES.get(name)
    reference = _outputs(model, name)
    ctx = PassContext(shapes=shapes)
    drops = []
    for ratio in (0.1, 0.3, 0.5):
        pruned, record = run_pass(get_pass("prune")(ratio=ratio), model, ctx)
        onnx.checker.check_model(pruned, full_check=True)
        outputs = _outputs(pruned, name)
        assert {k: v.shape for k, v in outputs.items()} == {k: v.shape for k, v in reference.items()}
        assert all(np.isfinite(v).all() for v in outputs.values())
        assert record.after.macs_known < record.before.macs_known, (name, ratio)
        assert record.details["groups_prunable"] >= 1
        drops.append(1 - record.after.macs_known / record.before.macs_known)
    assert drops == sorted(drops) and drops[-1] > drops[0], drops  # more pruning, fewer MACs


@pytest.mark.parametrize("name", _params())
def test_ratio_zero_is_identity(name):
    model = load_corpus(name)
    pruned, record = run_pass(get_pass("prune")(ratio=0.0), model, PassContext(shapes=CORPUS_SHAPES.get(name)))
    assert record.details["channels_removed"] == 0
    before, after = _outputs(model, name), _outputs(pruned, name)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)
