from __future__ import annotations

import pytest

from onnxopt.errors import ConfigError
from onnxopt.profiling import get_profile, profiles
from onnxopt.profiling.profiles import PROVIDER_PACKAGES, Profile

SHIPPED = ["cpu", "cpu-1t", "cuda", "tensorrt", "openvino", "directml", "coreml", "nnapi", "qnn-htp", "xnnpack",
           "webgpu"]


def test_every_required_profile_is_shipped():
    assert set(SHIPPED) <= set(profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_known_providers(name):
    prof = get_profile(name)
    assert prof.name == name
    assert prof.description
    # real onnxruntime provider names only, each with the package that brings it
    assert all(p.name in PROVIDER_PACKAGES for p in prof.providers)
    assert prof.accelerates.precisions
    assert not prof.allow_fallback  # shipped profiles never measure silently on another provider


def test_profiles_describe_their_hardware():
    assert get_profile("cpu-1t").session.intra_op_threads == 1
    assert get_profile("cpu-1t").session.allow_spinning is False
    assert get_profile("cpu").session.intra_op_threads == 0
    assert get_profile("tensorrt").accelerates.activation_symmetric is True
    assert "qdq-s8s8" in get_profile("tensorrt").accelerates.quant_formats
    assert "qdq-u16u8" in get_profile("qnn-htp").accelerates.quant_formats
    assert "fp16" in get_profile("cuda").accelerates.precisions
    assert get_profile("nnapi").edge.mobile_check and get_profile("coreml").edge.ort_format
    assert get_profile("tensorrt").providers[0].options["trt_fp16_enable"] is True
    assert get_profile("tensorrt").providers[0].ort_options()["trt_fp16_enable"] == "1"


def test_extends_inherits_and_overrides():
    base, child = get_profile("cpu"), get_profile("cpu-1t")
    assert child.measure == base.measure
    assert child.accelerates == base.accelerates
    assert child.session.intra_op_threads == 1 and base.session.intra_op_threads == 0
    # tables merge key by key; a provider list replaces the base's
    tensorrt = get_profile("tensorrt")
    assert [p.name for p in tensorrt.providers][:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert tensorrt.session.intra_op_threads == 1  # from cuda
    assert tensorrt.measure.warmup == 20 and tensorrt.measure.min_repeats == 100


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('extends = "cpu"\n[session]\nintra_threads = 2\n')
    with pytest.raises(ConfigError) as info:
        get_profile(path)
    assert "session.intra_threads" in str(info.value)
    assert "intra_op_threads" in info.value.hint


def test_bad_value_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[measure]\ntarget_rel_ci = -1\n')
    with pytest.raises(ConfigError, match="measure.target_rel_ci"):
        get_profile(path)
    path.write_text('[[providers]]\nname = "CUDA"\n')
    with pytest.raises(ConfigError, match="providers.0.name"):
        get_profile(path)


def test_unknown_profile_and_cycles(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown profile 'no-such-device'") as info:
        get_profile("no-such-device")
    assert "cpu-1t" in info.value.hint
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    monkeypatch.setenv("ONNXOPT_PROFILES", str(tmp_path))
    with pytest.raises(ConfigError, match="cycle"):
        get_profile("a")
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("[session\n")
        get_profile("broken")


def test_user_profile_folder_extends_a_shipped_one(tmp_path, monkeypatch):
    (tmp_path / "my-board.toml").write_text(
        'description = "my board"\nextends = "cpu-1t"\n[measure]\nmax_time_s = 2.0\n'
        '[accelerates]\nprecisions = ["fp32", "fp16"]\n')
    monkeypatch.setenv("ONNXOPT_PROFILES", str(tmp_path))
    prof = get_profile("my-board")
    assert isinstance(prof, Profile) and prof.description == "my board"
    assert prof.measure.max_time_s == 2.0 and prof.measure.warmup == get_profile("cpu").measure.warmup
    assert prof.session.intra_op_threads == 1
    assert prof.accelerates.precisions == ["fp32", "fp16"]
    assert "my-board" in profiles()
