"""The sensitivity command: one curve per prunable group, damage grows with the ratio, suggestions apply."""

from __future__ import annotations

import json

import pytest

from onnxopt.passes import PassContext, get_pass, run_pass
from tests.conftest import DIGITS, DIGITS_EVAL, load_corpus
from tests.helpers import run_cli


def test_sensitivity_cli_json_and_suggestions(capsys):
    code, out, err = run_cli(["sensitivity", DIGITS, "--data", DIGITS_EVAL, "--limit", "100", "--ratios", "0.2,0.6",
                              "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["metric"] == "accuracy" and len(report["groups"]) >= 5
    worst = {row["group"]: [p["score"] for p in row["points"]] for row in report["groups"] if len(row["points"]) == 2}
    assert any(scores[1] < scores[0] for scores in worst.values())  # pruning more of a group hurts it more
    overrides = "|".join(report["suggested_overrides"])
    _, record = run_pass(get_pass("prune")(ratio=0.0, overrides=overrides), load_corpus("digits"), PassContext())
    assert record.after.macs < record.before.macs


def test_sensitivity_cli_rejects_bad_ratios(capsys):
    code, _, err = run_cli(["sensitivity", DIGITS, "--ratios", "0.3,1.5"], capsys)
    assert code == 2 and "ratios" in err


def test_sensitivity_cli_spends_a_macs_budget_from_the_curves(capsys):
    code, out, err = run_cli(["sensitivity", DIGITS, "--data", DIGITS_EVAL, "--limit", "100", "--ratios",
                              "0.2,0.4,0.6", "--macs-budget", "0.3", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["macs_budget"] == 0.3 and report["budget_macs_drop"] >= 0.3
    # the cheapest steps first: the groups the budget cuts are a subset, each at a tried ratio
    cut = dict(item.split("=") for item in report["budget_overrides"])
    assert 0 < len(cut) <= len(report["groups"]) and set(cut.values()) <= {"0.2", "0.4", "0.6"}
    _, record = run_pass(get_pass("prune")(ratio=0.0, overrides="|".join(report["budget_overrides"])),
                         load_corpus("digits"), PassContext())
    # per-group drops only add up approximately; the real cut lands near the budget
    assert record.after.macs <= 0.8 * record.before.macs


def test_sensitivity_cli_rejects_a_bad_budget(capsys):
    code, _, err = run_cli(["sensitivity", DIGITS, "--macs-budget", "1.5"], capsys)
    assert code == 2 and "macs_budget 1.5" in err


def test_the_library_checks_ratios_and_budget_itself():
    import onnxopt
    from onnxopt.errors import ConfigError
    from onnxopt.passes.prune.sensitivity import for_macs_budget

    with pytest.raises(ConfigError, match=r"bad ratios \[0.3, 1.5\]"):
        onnxopt.sensitivity(DIGITS, ratios=[0.3, 1.5])
    with pytest.raises(ConfigError, match="macs_budget"):
        for_macs_budget([], 0.0)
