"""What a tune run leaves behind: nothing at all in memory (out_dir=None), and in DIR best.onnx with its
session settings, pareto/, trials.csv, report.json and report.html, re-rendered by ``onnxopt report DIR``."""

from __future__ import annotations

import csv
import json
import sqlite3
import tempfile

import numpy as np
import onnx
import pytest

from onnxopt.tuning.run import DB_NAME
from tests.conftest import DIGITS, DIGITS_EVAL
from tests.helpers import run_cli
from tests.tuning.fakes import FAST_RECIPE, FakeMeter, tune_fast

# int8 too: quantization writes its own temp files while it runs, and must take them away
INT8_RECIPE = {**FAST_RECIPE, "fix": {k: v for k, v in FAST_RECIPE["fix"].items() if k != "precision"} |
               {"quantize.latency_aware": False},
               "values": {**FAST_RECIPE["values"], "precision": ["fp32", "int8"]}}


ORT_OWN = {".ses"}  # onnxruntime's own session-id file in the temp folder (written by its native library)


def files_under(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_in_memory_tune_touches_no_disk(tmp_path, monkeypatch):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    opened: list[str] = []
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda path, *a, **k: opened.append(str(path)) or connect(path, *a, **k))
    models_before = files_under(DIGITS.parent)

    model = onnx.load(DIGITS)  # a ModelProto in, as right after torch.onnx.export
    with np.load(DIGITS_EVAL) as data:
        arrays = {"input": data["input"]}
    result = tune_fast(model=model, calib=arrays, budget=6, recipe=INT8_RECIPE, seed=2,
                       meter=FakeMeter(spread=0.001))

    assert isinstance(result.model, onnx.ModelProto) and result.trials and result.front
    assert any(t.point.get("precision") == "int8" for t in result.trials)
    assert opened == [":memory:"]  # the trial cache stayed in memory
    assert files_under(cwd) == set()
    assert files_under(tmp) - ORT_OWN == set()  # passes' temp files were removed again
    assert files_under(DIGITS.parent) == models_before
    assert result.summary["input"] == "(in memory)"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    result = tune_fast(model=str(DIGITS), out_dir=out, budget=6, seed=4, meter=FakeMeter(spread=0.001))
    return out, result


def test_out_dir_holds_the_model_its_settings_the_front_and_the_report(tuned):
    out, result = tuned
    assert result.improved  # the fake reads simplify's smaller model as 3% faster, beyond a 0.1% spread
    names = files_under(out)
    assert {"best.onnx", "best.ort_settings.json", "trials.csv", "report.json", "report.html", DB_NAME} <= names
    assert not [n for n in names if n.endswith(".tmp") or n.rsplit("/", 1)[-1].startswith(".")]  # no half-writes

    best = onnx.load(out / "best.onnx")
    onnx.checker.check_model(best)
    assert [n.op_type for n in best.graph.node] == [n.op_type for n in result.model.graph.node]
    settings = json.loads((out / "best.ort_settings.json").read_text())
    assert settings["profile"] == "cpu-1t"
    for name, value in result.best.session.items():
        assert settings["session"][name] == value

    pareto = sorted((out / "pareto").glob("*.onnx"))
    assert len(pareto) == len([t for t in result.front if t.model is not None]) >= 1
    for path in pareto:
        onnx.checker.check_model(onnx.load(path))

    report = json.loads((out / "report.json").read_text())
    assert report["best"] == result.best.seq and report["front"] == [t.seq for t in result.front]
    assert [r["seq"] for r in report["trials"]] == [t.seq for t in result.trials]
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["spec"] for r in rows] == [t.spec for t in result.trials]
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and result.best.spec in html


def test_report_rerenders_from_the_sqlite_file(tuned, capsys):
    out, result = tuned
    original = json.loads((out / "report.json").read_text())
    (out / "report.html").unlink()
    (out / "trials.csv").unlink()
    code, stdout, err = run_cli(["report", out, "--json"], capsys)
    assert code == 0, err
    rendered = json.loads(stdout)
    assert (out / "report.html").is_file() and (out / "trials.csv").is_file()
    assert json.loads((out / "report.json").read_text()) == rendered
    key = ("seq", "spec", "status", "ratio", "session")
    assert [[r[k] for k in key] for r in rendered["trials"]] == [[r[k] for k in key] for r in original["trials"]]
    assert rendered["best"] == original["best"] and rendered["front"] == original["front"]
    assert rendered["summary"]["decision"] == original["summary"]["decision"]
    with open(out / "trials.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(result.trials)


def test_report_of_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(["report", tmp_path], capsys)
    assert code not in (0, 1) and "trials.sqlite" in err
    assert len(err.strip().splitlines()) <= 2
