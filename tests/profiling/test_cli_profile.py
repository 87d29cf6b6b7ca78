from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from onnxopt.cli import main
from tests.conftest import DIGITS
from tests.profiling.helpers import FAST


@pytest.fixture
def quick_profile(tmp_path):
    path = tmp_path / "quick.toml"
    path.write_text('extends = "cpu-1t"\n[measure]\n' + "".join(f"{k} = {v!r}\n" for k, v in FAST.items()))
    return path


def test_profile_json_has_latency_and_provider(quick_profile, capsys):
    assert main(["profile", str(DIGITS), "--profile", str(quick_profile), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    [result] = payload["results"]
    assert {"median", "p90", "n"} <= set(result["latency_ms"])
    assert result["latency_ms"]["n"] >= FAST["min_repeats"]
    assert result["provider"] == "CPUExecutionProvider" == payload["provider"]
    assert result["inputs_synthetic"] is True and result["ok"] is True


def test_profile_two_models_renders_ratios(quick_profile, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["profile", str(DIGITS), str(DIGITS), "--profile", str(quick_profile)]) == 0
    out = capsys.readouterr().out
    assert "1 (reference)" in out and "CPUExecutionProvider 22" in out
    # its table row and its session line (a loaded machine may add a "note:" line about the CI)
    assert sum(line.count("digits_cnn.onnx#2") for line in out.splitlines() if not line.startswith("note:")) == 2


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_missing_provider_is_one_line_and_exit_code_5(capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile", str(DIGITS), "--profile", "cuda"])
    assert info.value.code == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxruntime-gpu" in err


def test_bad_profile_key_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[measure]\nrepeats = 3\n")
    with pytest.raises(SystemExit) as info:
        main(["profile", str(DIGITS), "--profile", str(bad)])
    assert info.value.code == 2 and "measure.repeats" in capsys.readouterr().err


def test_profiles_command_lists_shipped_profiles(capsys):
    assert main(["profiles", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert {"cpu", "cpu-1t", "tensorrt", "qnn-htp"} <= names
