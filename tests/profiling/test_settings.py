from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxopt
from onnxopt.errors import OutputExistsError
from onnxopt.profiling import get_profile
from onnxopt.profiling.child import session_options
from onnxopt.profiling.settings import embed_settings, ort_config, read_settings, write_settings
from tests.conftest import DIGITS
from tests.profiling.helpers import fast_profile


def test_session_options_apply_every_setting():
    prof = get_profile({"name": "t", "session": {"intra_op_threads": 3, "inter_op_threads": 2,
                                                 "execution_mode": "parallel", "graph_optimization_level": "basic",
                                                 "enable_mem_pattern": False, "allow_spinning": False,
                                                 "config_entries": {"session.disable_prepacking": "1"}}})
    so = session_options(prof.session.model_dump(mode="json"))  # the child builds them from the plain dict
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 2
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert not so.enable_mem_pattern
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.disable_prepacking") == "1"


def test_embedded_settings_are_read_back_and_replace_old_ones():
    prof = get_profile("cpu-1t")
    model = embed_settings(embed_settings(onnx.load(DIGITS), get_profile("cpu")), prof)
    assert [p.key for p in model.metadata_props].count("ort_config") == 1
    assert read_settings(model) == ort_config(prof.session)
    assert read_settings(model)["session_options"]["intra_op_num_threads"] == 1
    assert read_settings(onnx.load(DIGITS)) is None


def test_onnxruntime_reads_the_embedded_config(monkeypatch):
    model = embed_settings(onnx.load(DIGITS), get_profile("cpu-1t"))
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    x = np.zeros((1, 1, 8, 8), np.float32)
    assert ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    # proof that onnxruntime parses the key: a value it rejects fails session creation
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for prop in broken.metadata_props:
        if prop.key == "ort_config":
            prop.value = json.dumps({"session_options": {"execution_mode": 5}})
    with pytest.raises(Exception, match="execution_mode"):
        ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])


def test_write_settings_writes_model_and_sidecar_and_protects_the_input(tmp_path):
    prof = get_profile("xnnpack")
    written = write_settings(onnx.load(DIGITS), prof, tmp_path, "digits")
    assert [p.name for p in written] == ["digits.onnx", "digits.ort_settings.json"]
    assert read_settings(onnx.load(written[0]))["session_options"]["intra_op_num_threads"] == 1
    side = json.loads(written[1].read_text())
    assert side["providers"][0] == {"name": "XnnpackExecutionProvider", "options": {"intra_op_num_threads": "4"}}
    assert side["session"]["allow_spinning"] is False and side["profile"] == "xnnpack"
    with pytest.raises(OutputExistsError):
        write_settings(onnx.load(written[0]), prof, tmp_path, "digits", protect=(written[0],))


def test_profile_api_writes_settings(tmp_path):
    report = onnxopt.profile(DIGITS, profile=fast_profile(), write_settings=tmp_path / "tuned")
    assert [p.rsplit("/", 1)[-1] for p in report.settings_files] == ["digits_cnn.onnx", "digits_cnn.ort_settings.json"]
    tuned = onnx.load(report.settings_files[0])
    assert read_settings(tuned)["session_options"]["intra_op_num_threads"] == 1
    assert len(tuned.graph.node) == len(onnx.load(DIGITS).graph.node)
