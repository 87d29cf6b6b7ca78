"""``onnxopt optimize --eval module:function``: the user's metric drives quantize's max_drop target."""

from __future__ import annotations

import json

from tests.conftest import DIGITS, DIGITS_EVAL
from tests.helpers import run_cli

METRIC = '''
import numpy as np
from pathlib import Path

CALLS = Path(__file__).with_name("calls.txt")


def accuracy(outputs, labels):
    logits = next(iter(outputs.values())).reshape(len(labels), -1)
    with CALLS.open("a") as f:
        f.write("called\\n")
    return float(np.mean(logits.argmax(axis=1) == labels))
'''


def test_eval_metric_reaches_the_quantize_target(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_metric.py").write_text(METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "q.onnx"
    code, stdout, err = run_cli(["optimize", DIGITS, "-o", out, "--passes", "quantize:target=max_drop=0.01",
                                 "--calib", DIGITS_EVAL, "--eval", "my_metric:accuracy", "--json"], capsys)
    assert code == 0, err
    quantize = json.loads(stdout)["passes"][0]
    assert quantize["options"]["eval"] == "my_metric:accuracy"
    scores = quantize["details"]["quantize"]["scores"]
    assert scores["max_drop"] is not None and scores["max_drop"] <= 0.01
    assert (tmp_path / "calls.txt").read_text().count("called") >= 2  # reference + at least one candidate
    assert out.exists()


def test_eval_without_a_quantize_pass_is_a_usage_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_metric2.py").write_text(METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli(["optimize", DIGITS, "-o", tmp_path / "o.onnx", "--passes", "simplify",
                            "--eval", "my_metric2:accuracy"], capsys)
    assert code != 0 and "quantize" in err and len(err.strip().splitlines()) <= 2
    code, _, err = run_cli(["optimize", DIGITS, "-o", tmp_path / "o.onnx", "--passes", "quantize",
                            "--calib", DIGITS_EVAL, "--eval", "no_such_module_xyz:f"], capsys)
    assert code != 0 and "no_such_module_xyz" in err
