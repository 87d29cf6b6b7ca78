"""The ``global`` strategy, ``target_macs`` and the sensitivity plot."""

from __future__ import annotations

import math

import onnx
import pytest

from onnxopt.passes import PassContext, get_pass, run_pass
from onnxopt.passes.prune.analyze import analyze
from onnxopt.passes.prune.ratios import MAX_GLOBAL_RATIO
from tests.conftest import DIGITS, DIGITS_EVAL, load_corpus
from tests.helpers import run_cli


def test_global_strategy_spends_one_budget_unevenly():
    model = load_corpus("digits")
    prunable = [g for g in analyze(model).groups if g.prunable]
    total = sum(g.channels for g in prunable)
    _, rec = run_pass(get_pass("prune")(ratio=0.4, strategy="global"), model, PassContext())
    groups = [g for g in rec.details["groups"] if g["prunable"]]
    # one threshold over all groups: exactly the budget goes, but not the same share from each group
    assert rec.details["channels_removed"] == math.floor(0.4 * total)
    fractions = {round(1 - g["kept"] / g["channels"], 3) for g in groups}
    assert len(fractions) > 1, fractions
    assert all(g["kept"] >= max(1, math.ceil(g["channels"] * (1 - MAX_GLOBAL_RATIO))) for g in groups)
    pruned, _ = run_pass(get_pass("prune")(ratio=0.4, strategy="global"), model, PassContext())
    onnx.checker.check_model(pruned, full_check=True)


@pytest.mark.parametrize(("strategy", "target"), [("uniform", 0.5), ("global", 0.3)])
def test_target_macs_is_reached_and_not_overshot(strategy, target):
    model = load_corpus("digits")
    _, rec = run_pass(get_pass("prune")(target_macs=target, strategy=strategy), model, PassContext())
    drop = 1 - rec.after.macs_known / rec.before.macs_known
    # the estimate that steers the search is the measured count, and the search stops near the target
    assert abs(drop - rec.details["macs_estimate_drop"]) < 0.01
    assert target <= drop < target + 0.1, drop


def test_sensitivity_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    path = tmp_path / "curves.png"
    code, _, err = run_cli(["sensitivity", DIGITS, "--data", DIGITS_EVAL, "--limit", "40", "--ratios", "0.5",
                            "--plot", path, "--json"], capsys)
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_default_rounding_follows_the_target_block_on_wide_groups_only():
    from onnxopt.passes.prune.ratios import auto_rounding
    from onnxopt.profiling.profiles import get_profile

    assert auto_rounding(None, None) == (8, 64) == auto_rounding(None, get_profile("cpu-1t"))
    assert auto_rounding(16, get_profile("cpu-1t")) == (16, 0)  # the user's value wins, on every group
    model = load_corpus("ppocr_cls")
    shapes = {"x": [1, 3, 48, 192]}
    _, auto = run_pass(get_pass("prune")(ratio=0.3), model, PassContext(shapes=shapes))
    _, exact = run_pass(get_pass("prune")(ratio=0.3, round_to=1), model, PassContext(shapes=shapes))
    for a, e in zip(auto.details["groups"], exact.details["groups"], strict=True):
        if a["prunable"] and a["channels"] >= 64:
            assert a["kept"] % 8 == 0 and a["kept"] >= e["kept"], (a, e)
        else:
            assert a["kept"] == e["kept"], (a, e)
    assert auto.after.macs_known < auto.before.macs_known


def test_auto_rounding_follows_the_profile_channel_block(tmp_path):
    from onnxopt.passes.prune.ratios import AUTO_ROUND_MIN_BLOCKS, auto_rounding
    from onnxopt.profiling import get_profile

    assert auto_rounding(None, get_profile("cpu")) == (8, 8 * AUTO_ROUND_MIN_BLOCKS)
    wide = tmp_path / "wide.toml"
    wide.write_text('extends = "cpu"\n[accelerates]\nchannel_block = 16\n')
    assert auto_rounding(None, get_profile(wide)) == (16, 16 * AUTO_ROUND_MIN_BLOCKS)
    assert auto_rounding(4, get_profile(wide)) == (4, 0)  # the user's value wins, for every group


def test_sensitivity_with_activation_criterion_uses_the_data():
    import onnxopt
    from tests.conftest import DIGITS, DIGITS_EVAL

    report = onnxopt.sensitivity(DIGITS, data=str(DIGITS_EVAL), ratios=[0.3], criterion="activation", limit=32)
    assert report.metric == "accuracy" and report.groups
    assert all(0.0 <= point["score"] <= 1.0 for row in report.groups for point in row["points"])


def test_sensitivity_strategy_spends_the_budget_where_it_costs_least():
    from onnxopt.data import load_data
    from onnxopt.evaluate import fidelity

    model = load_corpus("digits")
    calib, held_out = load_data(DIGITS_EVAL, model, limit=150), load_data(DIGITS_EVAL, model).tail(300)
    # the same criterion both ways (l2), so only the allocation differs
    uniform, _ = run_pass(get_pass("prune")(ratio=0.5, criterion="l2", calib_size=150), model,
                          PassContext(data=calib))
    measured, rec = run_pass(get_pass("prune")(ratio=0.5, criterion="l2", strategy="sensitivity", calib_size=150),
                             model, PassContext(data=calib))
    onnx.checker.check_model(measured, full_check=True)
    prunable = [g for g in rec.details["groups"] if g["prunable"]]
    # the same share of channels goes (rounding aside), but not the same share from every group
    assert rec.details["channels_removed"] >= math.floor(0.5 * sum(g["channels"] for g in prunable)) - 2
    assert len({round(1 - g["kept"] / g["channels"], 2) for g in prunable}) > 2
    allocation = rec.details["allocation"]
    assert len(allocation) == len(prunable) and all(a["curve"] for a in allocation)
    # measured on held-out samples: uniform 0.5 keeps 96.7% accuracy, the allocation 99.0% (fp32 99.7%)
    uniform_acc = fidelity(model, uniform, held_out).outputs[0].accuracy_candidate
    measured_acc = fidelity(model, measured, held_out).outputs[0].accuracy_candidate
    assert measured_acc > uniform_acc + 0.01, (uniform_acc, measured_acc)
    assert rec.after.macs_known < 0.6 * rec.before.macs_known


def test_sensitivity_strategy_needs_calibration_data():
    from onnxopt.errors import PassError

    with pytest.raises(PassError, match="strategy=sensitivity needs calibration data"):
        run_pass(get_pass("prune")(ratio=0.3, strategy="sensitivity", recover="none"), load_corpus("digits"),
                 PassContext())
