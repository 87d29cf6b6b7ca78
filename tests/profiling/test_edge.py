from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

import onnxopt
from onnxopt.profiling.edge import emit_ort, mobile_usability, usability_kinds
from tests.conftest import DIGITS
from tests.profiling.helpers import conv_relu, fast_profile


def test_emit_ort_writes_a_model_onnxruntime_runs_with_the_same_outputs(tmp_path):
    model = onnx.load(DIGITS)
    artifact = emit_ort(model, tmp_path, "digits", target_platform="arm")
    assert artifact.path.endswith("digits.ort") and artifact.size_bytes > 1000
    assert artifact.config_path and "Conv" in open(artifact.config_path).read()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    got = ort.InferenceSession(artifact.path, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.ort", "digits.required_operators.config"]


def test_mobile_usability_of_a_fully_supported_fixed_shape_model():
    report = mobile_usability(conv_relu(fixed=True), ("nnapi", "coreml"))
    assert report.dynamic_inputs == []
    by_name = {p.provider: p for p in report.providers}
    assert set(by_name) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    nnapi = by_name["NNAPI"]
    assert nnapi.suitability == "YES" and nnapi.partitions == 1
    assert nnapi.supported_nodes == nnapi.nodes and nnapi.unsupported_ops == []


def test_mobile_usability_reports_dynamic_shapes_and_what_fixing_them_gives():
    report = mobile_usability(conv_relu(fixed=False), ("nnapi",))
    assert report.dynamic_inputs == ["x"]
    [nnapi] = report.providers
    assert nnapi.suitability == "NO" and nnapi.suitability_if_fixed_shapes == "YES"


def test_usability_kinds_follow_the_provider_chain():
    assert usability_kinds(["NnapiExecutionProvider", "CPUExecutionProvider"]) == ["nnapi"]
    assert usability_kinds(["CPUExecutionProvider"]) == []


def test_profile_api_emits_ort_and_checks_usability(tmp_path):
    report = onnxopt.profile(DIGITS, profile=fast_profile(), emit_ort=tmp_path, mobile_check=True,
                             shapes={"input": [1, 1, 8, 8]})
    [edge] = report.edge
    assert edge.errors == [] and edge.ort.path.endswith("digits_cnn.ort")
    assert edge.usability.dynamic_inputs == []  # --shape fixed the batch dim
    assert {p.provider for p in edge.usability.providers} == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
