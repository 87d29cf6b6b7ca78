"""The CLI end to end on the project's model: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import onnxopt
from onnxopt.model import load
from tests.conftest import DIGITS, DIGITS_EVAL
from tests.helpers import run_cli


def test_optimize_json_report_and_output(tmp_path, capsys):
    out = tmp_path / "digits.opt.onnx"
    code, stdout, err = run_cli(["optimize", DIGITS, "-o", out, "--passes", "simplify", "--calib", DIGITS_EVAL,
                                 "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert [p["name"] for p in report["passes"]] == ["simplify"]
    for side in ("before", "after"):
        assert {"size_bytes", "params", "macs"} <= set(report[side])
    assert report["after"]["nodes"] < report["before"]["nodes"]
    fid = report["fidelity"]
    assert fid["synthetic"] is False and fid["samples"] > 0
    assert "last 128 of 450" in fid["source"]  # held out from the calibrating passes, which read the front
    assert fid["outputs"][0]["cosine_min"] > 0.99999
    assert fid["accuracy_candidate"] == pytest.approx(fid["accuracy_reference"])
    assert load(out).graph.node


def test_optimize_separate_evaluation_data(tmp_path, capsys):
    held_out = tmp_path / "held.npz"
    with np.load(DIGITS_EVAL) as full:
        np.savez(held_out, input=full["input"][:40], labels=full["labels"][:40])
    code, stdout, err = run_cli(["optimize", DIGITS, "-o", tmp_path / "o.onnx", "--passes", "simplify", "--calib",
                                 DIGITS_EVAL, "--data", held_out, "--json"], capsys)
    assert code == 0, err
    fid = json.loads(stdout)["fidelity"]
    assert fid["samples"] == 40 and "held.npz" in fid["source"]


def test_optimize_opset_upgrade(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(["optimize", DIGITS, "-o", out, "--passes", "simplify", "--opset", "18"], capsys)
    assert code == 0, err
    assert next(o.version for o in load(out).opset_import if o.domain == "") == 18
    code, _, err = run_cli(["optimize", DIGITS, "-o", out, "--passes", "simplify", "--opset", "11"], capsys)
    assert code == 2 and "opset 17" in err


def test_optimize_table_output(tmp_path, capsys):
    code, stdout, _ = run_cli(["optimize", DIGITS, "-o", tmp_path / "o.onnx", "--passes", "simplify"], capsys)
    assert code == 0
    assert "simplify" in stdout and "fidelity" in stdout and "synthetic" in stdout


def test_optimize_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "simplify"\nort = false\n')
    code, stdout, err = run_cli(["optimize", DIGITS, "-o", tmp_path / "o.onnx", "--recipe", recipe, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["passes"][0]["options"]["ort"] is False


@pytest.mark.parametrize("args, code, fragment", [
    (["--passes", "nosuchpass"], 2, "unknown pass"),
    (["--passes", "simplify:nosuch=1"], 2, "unknown option"),
    ([], 2, "exactly one of"),
    (["--passes", "simplify", "--shape", "input=1x1x9x9"], 2, "fixed dims"),
    (["--passes", "simplify", "--calib", "missing.npz"], 3, "missing.npz"),
])
def test_optimize_usage_errors(tmp_path, capsys, args, code, fragment):
    out = tmp_path / "o.onnx"
    rc, _, err = run_cli(["optimize", DIGITS, "-o", out, *args], capsys)
    assert rc == code, err
    assert len(err.strip().splitlines()) == 1 and fragment in err
    assert not out.exists()


def test_wrong_data_shape_names_input_and_both_shapes(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 1, 9, 9), np.float32))
    rc, _, err = run_cli(["compare", DIGITS, DIGITS, "--data", bad], capsys)
    assert rc == 3
    line = err.strip()
    assert "'input'" in line and "9, 9" in line and "8" in line and "\n" not in line


def test_a_failing_pass_exits_4_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from onnxopt.passes import simplify

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(simplify, "fold_affine", broken)
    out = tmp_path / "o.onnx"
    rc, _, err = run_cli(["optimize", DIGITS, "-o", out, "--passes", "simplify"], capsys)
    assert rc == 4 and "simplify" in err and "simulated failure" in err
    assert not out.exists()


def test_inspect_json(capsys):
    rc, stdout, _ = run_cli(["inspect", DIGITS, "--json"], capsys)
    assert rc == 0
    report = json.loads(stdout)
    assert report["inputs"][0]["name"] == "input" and report["inputs"][0]["dims"][1:] == [1, 8, 8]
    assert report["stats"]["macs"] > 0 and report["stats"]["params"] > 1000
    assert report["largest_layers"][0]["macs"] >= report["largest_layers"][-1]["macs"]
    assert report["size_on_disk"] == DIGITS.stat().st_size


def test_compare_json_self(capsys):
    rc, stdout, _ = run_cli(["compare", DIGITS, DIGITS, "--data", DIGITS_EVAL, "--limit", "20", "--json"], capsys)
    assert rc == 0
    result = json.loads(stdout)
    assert result["samples"] == 20 and result["outputs"][0]["cosine_min"] == pytest.approx(1.0)


def test_passes_lists_the_registry(capsys):
    rc, stdout, err = run_cli(["passes", "--json"], capsys)
    assert rc == 0, err
    rows = {row["name"]: row for row in json.loads(stdout)}
    assert "simplify" in rows
    assert rows["prune"] == onnxopt.list_passes()["prune"].describe().model_dump(mode="json")
    assert rows["prune"]["deprecated"] == {"calib_samples": "calib_size"}
    rc, stdout, err = run_cli(["passes"], capsys)
    assert rc == 0, err
    assert "calib_samples: deprecated, write calib_size" in " ".join(stdout.split())


def test_old_option_name_warns_in_one_line_and_still_works(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code, stdout, err = run_cli(["optimize", DIGITS, "-o", out, "--passes", "fp16:min_cosine=0.99", "--json"],
                                capsys)
    assert code == 0, err
    assert json.loads(stdout)["passes"][0]["options"]["target"] == "cosine>=0.99"
    assert err.count("\n") == 1 and err.startswith("warning: option 'min_cosine' is deprecated")


def test_console_script_and_debug_traceback(tmp_path):
    exe = [sys.executable, "-m", "onnxopt.cli"]
    ok = subprocess.run([*exe, "inspect", str(DIGITS)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "digits_cnn.onnx" in ok.stdout
    missing = subprocess.run([*exe, "inspect", str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    debug = subprocess.run([*exe, "inspect", str(tmp_path / "x.onnx"), "--debug"], capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_compare_on_an_image_folder_with_a_spec(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / f"{index}.png")
    rc, stdout, err = run_cli(["compare", DIGITS, DIGITS, "--data", folder, "--image-spec",
                               "resize=8,crop=8,color=GRAY,scale=1/16", "--json"], capsys)
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["samples"] == 3 and result["synthetic"] is False
    rc, _, err = run_cli(["compare", DIGITS, DIGITS, "--data", folder, "--image-spec", "bogus=1"], capsys)
    assert rc == 2 and "bogus" in err
