"""Recovery from the unpruned model's kept channels: one run of the data per chunk of layers."""

from __future__ import annotations

from onnxopt.data import load_data
from onnxopt.evaluate import fidelity
from onnxopt.passes.prune.analyze import analyze
from onnxopt.passes.prune.apply import cut, guard, kept_channels, kept_outputs
from onnxopt.passes.prune.importance import class_scores
from onnxopt.passes.prune.prune import PruneConfig, prune_model
from onnxopt.passes.prune.ratios import Budget, choose
from onnxopt.passes.prune.recover import recover
from tests.conftest import DIGITS_EVAL, load_corpus


def test_original_inputs_fit_in_one_pass_and_help():
    model = load_corpus("digits")
    calib = load_data(DIGITS_EVAL, model, limit=64)
    held_out = load_data(DIGITS_EVAL, model).tail(386)  # the samples after the 64 used to fit
    plain, _ = prune_model(model, PruneConfig(ratio=0.3, recover="none", round_to=1, calib_size=64), None, calib)
    original = PruneConfig(ratio=0.3, refit_inputs="original", round_to=1, calib_size=64)
    fitted, report = prune_model(model, original, None, calib)
    assert report["recovery"]["passes"] == 1 and report["recovery"]["layers"] >= 3
    assert fidelity(model, fitted, held_out).outputs[0].cosine_mean > \
        fidelity(model, plain, held_out).outputs[0].cosine_mean + 0.05


def test_memory_budget_splits_the_layers_into_passes():
    model = load_corpus("digits")
    calib = load_data(DIGITS_EVAL, model, limit=16)
    result = analyze(model)
    removed = guard(result, choose(result.groups, class_scores(result, "l2", "mean"), Budget(0.3)))
    kept_out, kept_in = kept_outputs(result, removed), kept_channels(result, removed)
    pruned = cut(result, removed, like=model)
    _, one = recover(model, pruned, calib, kept_out, kept_in=kept_in)
    _, many = recover(model, pruned, calib, kept_out, kept_in=kept_in, memory_mb=1e-6)
    assert one["passes"] == 1 and many["passes"] == many["layers"] > 1


def test_downstream_refit_covers_depthwise_convs_and_helps():
    from onnxopt.data import Dataset
    from tests.conftest import CORPUS_SHAPES
    from tests.corpus_data import cls_inputs

    model = load_corpus("ppocr_cls")
    shapes = CORPUS_SHAPES["ppocr_cls"]
    calib = Dataset({"x": cls_inputs(4, seed=0)})
    held_out = Dataset({"x": cls_inputs(8, seed=1)})
    cut_only, rec_cut = prune_model(model, PruneConfig(ratio=0.3, round_to=1), shapes, calib)
    downstream = PruneConfig(ratio=0.3, refit_layers="downstream", round_to=1)
    fitted, rec_down = prune_model(model, downstream, shapes, calib)
    assert rec_down["recovery"]["layers"] > rec_cut["recovery"]["layers"]
    refit = {i.name for i in fitted.graph.initializer if i.name.endswith("_refit")}
    depthwise = [n for n in fitted.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise and any(n.input[1] in refit for n in depthwise)
    assert fidelity(model, fitted, held_out).outputs[0].cosine_mean >= \
        fidelity(model, cut_only, held_out).outputs[0].cosine_mean - 0.01


def test_output_cosine_scores_a_dead_or_broken_output_as_zero():
    import numpy as np
    from onnx import TensorProto, helper

    from onnxopt.data import Dataset
    from onnxopt.passes.prune.recover import output_cosine

    def scaled(factor: float):
        graph = helper.make_graph(
            [helper.make_node("Mul", ["x", "k"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor("k", TensorProto.FLOAT, [], [factor])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    data = Dataset({"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}, None, "normal")
    reference = scaled(1.0)
    assert output_cosine(reference, scaled(2.0), data) > 0.999999
    # an all-zero output (a saturated sigmoid) or a NaN one once scored 1.0 as "0/0 agrees"
    assert output_cosine(reference, scaled(0.0), data) == 0.0
    assert output_cosine(reference, scaled(float("nan")), data) == 0.0
