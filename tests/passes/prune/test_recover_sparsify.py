"""Recovery brings pruned models closer to the original; sparsify hits its targets; determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.data import load_data
from onnxopt.evaluate import fidelity
from onnxopt.passes import PassContext, build, get_pass, run_pass
from onnxopt.passes.prune.prune import PruneConfig, prune_model
from tests.conftest import CORPUS_SHAPES, DIGITS_EVAL, load_corpus


def test_recovery_improves_digits_on_held_out_data():
    model = load_corpus("digits")
    calib = load_data(DIGITS_EVAL, model, limit=64)
    held_out = load_data(DIGITS_EVAL, model).tail(386)  # the samples after the 64 used to fit
    plain, _ = prune_model(model, PruneConfig(ratio=0.3, recover="none", round_to=1, calib_size=64), None, calib)
    fitted, report = prune_model(model, PruneConfig(ratio=0.3, recover="lstsq", round_to=1, calib_size=64), None, calib)
    assert report["recovery"]["layers"] >= 3
    f_plain, f_fit = fidelity(model, plain, held_out), fidelity(model, fitted, held_out)
    assert f_fit.outputs[0].cosine_mean > f_plain.outputs[0].cosine_mean + 0.05
    assert f_fit.accuracy_candidate > f_plain.accuracy_candidate
    assert f_fit.accuracy_candidate >= f_fit.accuracy_reference - 0.03


@pytest.mark.parametrize("name", ["ppocr_cls"])
def test_recovery_improves_zoo_model_on_synthetic_data(name):
    model = load_corpus(name)
    shapes = CORPUS_SHAPES.get(name)
    calib = load_data("synthetic:n=16,seed=0", model, shapes=shapes)
    fresh = load_data("synthetic:n=8,seed=7", model, shapes=shapes)
    plain, _ = prune_model(model, PruneConfig(ratio=0.3, recover="none", round_to=1), shapes, calib)
    fitted, _ = prune_model(model, PruneConfig(ratio=0.3, recover="lstsq", round_to=1), shapes, calib)
    assert fidelity(model, fitted, fresh).outputs[0].cosine_mean > fidelity(model, plain, fresh).outputs[0].cosine_mean


def test_bias_correction_and_pass_with_calibration():
    model = load_corpus("digits")
    calib = load_data(DIGITS_EVAL, model, limit=32)
    pruned, record = run_pass(get_pass("prune")(ratio=0.3, criterion="l2", recover="bias"), model,
                              PassContext(data=calib))
    rec = record.details["recovery"]
    assert rec["mode"] == "bias" and rec["layers"] >= 3
    # a re-fit that does not help on the calibration data is dropped, never shipped
    assert rec["cosine_with"] >= rec["cosine_without"] or rec["kept_unrecovered"]
    plain, _ = run_pass(get_pass("prune")(ratio=0.3, criterion="l2", recover="none"), model, PassContext())
    assert fidelity(model, pruned, calib).outputs[0].cosine_mean >= fidelity(model, plain, calib).outputs[0].cosine_mean
    assert any("recovery" in note for note in record.notes)


def test_prune_is_deterministic_and_reports_groups():
    model = load_corpus("light_resnet50")
    ctx = PassContext()
    a, rec_a = run_pass(get_pass("prune")(ratio=0.3, round_to=8, criterion="bn_scale"), model, ctx)
    b, _ = run_pass(get_pass("prune")(ratio=0.3, round_to=8, criterion="bn_scale"), model, ctx)
    assert a.SerializeToString() == b.SerializeToString()
    details = rec_a.details
    # residual stages are coupled groups: fewer groups than convs, and all but the classifier prunable
    assert details["groups_total"] < 53 and details["groups_prunable"] == details["groups_total"] - 1
    assert details["macs_coverage"]["fraction"] > 0.9
    kept = [g["kept"] for g in details["groups"] if g["prunable"]]
    assert all(k % 8 == 0 for k in kept)


def test_target_macs_and_overrides():
    model = load_corpus("digits")
    _, rec = run_pass(get_pass("prune")(target_macs=0.5), model, PassContext())
    assert rec.after.macs <= 0.5 * rec.before.macs * 1.05
    _, rec = run_pass(get_pass("prune")(ratio=0.0, overrides="*=0.5"), model, PassContext())
    assert rec.after.macs < rec.before.macs


def test_activation_criterion_needs_and_uses_data():
    model = load_corpus("digits")
    calib = load_data(DIGITS_EVAL, model, limit=16)
    _, rec = run_pass(get_pass("prune")(ratio=0.3, criterion="activation", recover="none"), model,
                      PassContext(data=calib))
    assert rec.after.macs < rec.before.macs
    with pytest.raises(Exception, match="calibration data"):
        run_pass(get_pass("prune")(ratio=0.3, criterion="activation"), model, PassContext())


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_sparsify_magnitude_and_two_four():
    model = load_corpus("light_squeezenet")
    sparse, rec = run_pass(get_pass("sparsify")(sparsity=0.7), model, PassContext())
    layers = [item for item in rec.details["layers"] if "skipped" not in item]
    assert layers and all(abs(item["sparsity"] - 0.7) < 0.01 for item in layers)
    assert rec.details["zip_bytes_after"] < 0.6 * rec.details["zip_bytes_before"]
    assert any("do not run faster" in note for note in rec.notes)
    nm, rec = run_pass(get_pass("sparsify")(mode="nm"), model, PassContext())
    for name, w in _weights(nm).items():
        if name.endswith("_sparse") and w.ndim == 4 and w.shape[1] % 4 == 0:
            groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
            assert ((groups != 0).sum(axis=1) <= 2).all()
    data = load_data("synthetic:n=2", model)
    assert np.isfinite(fidelity(model, nm, data).outputs[0].cosine_mean)


def test_pipeline_spec_builds_prune():
    pipeline = build("simplify,prune:ratio=0.3,round_to=8,criterion=l1")
    assert [p.name for p in pipeline.passes] == ["simplify", "prune"]
    with pytest.raises(Exception, match="unknown option .ratios."):
        build("prune:ratios=0.3")
