"""Tests for onnxopt.data: loading, validating and feeding calibration/evaluation inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from onnxopt.data import Dataset, ImageSpec, load_data, parse_synthetic
from onnxopt.errors import ConfigError, DataError
from onnxopt.model import input_specs

ROOT = Path(__file__).resolve().parents[1]
DIGITS_MODEL, DIGITS_DATA = ROOT / "models" / "digits_cnn.onnx", ROOT / "models" / "digits_eval.npz"


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def classifier(batch="batch", channels=1, size=8, layout="NCHW") -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a tiny image classifier."""
    rng = np.random.default_rng(0)
    shape = [batch, channels, size, size] if layout == "NCHW" else [batch, size, size, channels]
    nodes = [] if layout == "NCHW" else [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2])]
    first = "input" if layout == "NCHW" else "nchw"
    nodes += [
        helper.make_node("Conv", [first, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((4, 10)).astype(np.float32), "gw"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "gb"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)


def two_inputs() -> onnx.ModelProto:
    """a: float32 [batch, 4], b: int64 [batch, 4] -> a + float(b)."""
    nodes = [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("Add", ["a", "bf"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
                          helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])


def symbolic_hw(elem=TensorProto.FLOAT) -> onnx.ModelProto:
    """image: [N, 3, H, W] -> GlobalAveragePool."""
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"])]
    return _model(nodes, [helper.make_tensor_value_info("image", elem, ["N", 3, "H", "W"])],
                  [helper.make_tensor_value_info("pooled", elem, ["N", 3, 1, 1])])


def identity(elem, dims) -> onnx.ModelProto:
    return _model([helper.make_node("Identity", ["x"], ["y"])], [helper.make_tensor_value_info("x", elem, dims)],
                  [helper.make_tensor_value_info("y", elem, dims)])


# ---------------------------------------------------------------- npz / npy / arrays


def test_npz_round_trip_keeps_arrays_and_labels(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    labels = np.arange(5)
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    data = load_data(tmp_path / "d.npz", classifier())
    assert len(data) == 5 and not data.synthetic and data.source.endswith("d.npz")
    np.testing.assert_array_equal(data.inputs["input"], x)
    np.testing.assert_array_equal(data.labels, labels)
    assert len(data.take(2)) == 2 and len(data.take(2).labels) == 2
    assert len(load_data(tmp_path / "d.npz", classifier(), limit=3)) == 3


def test_feeds_batch_axis_convention_slices_and_runs():
    model = classifier()
    x = np.random.default_rng(2).standard_normal((5, 1, 8, 8)).astype(np.float32)
    data = load_data({"input": x}, model)
    feeds = list(data.feeds(input_specs(model), batch_size=2))
    assert [f["input"].shape[0] for f in feeds] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in feeds]), x)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, feeds[0])[0].shape == (2, 10)
    assert data.batched(input_specs(model))


def test_feeds_whole_feed_convention():
    model = classifier(batch=1)
    x = np.ones((3, 1, 1, 8, 8), np.float32)  # rank + 1: each x[i] is one whole feed
    data = load_data({"input": x}, model)
    feeds = list(data.feeds(input_specs(model)))
    assert len(feeds) == 3 and all(f["input"].shape == (1, 1, 8, 8) for f in feeds)
    assert not data.batched(input_specs(model))
    with pytest.raises(DataError, match="batch size must be 1"):
        list(data.feeds(input_specs(model), batch_size=2))


def test_fixed_batch_refuses_other_batch_size():
    model = classifier(batch=1)
    data = load_data({"input": np.zeros((4, 1, 8, 8), np.float32)}, model)
    assert len(list(data.feeds(input_specs(model)))) == 4
    with pytest.raises(DataError, match="fixed batch of 1"):
        list(data.feeds(input_specs(model), batch_size=2))


def test_two_input_npz_and_int32_cast(tmp_path):
    a, b = np.zeros((3, 4), np.float64), np.ones((3, 4), np.int32)
    np.savez(tmp_path / "two.npz", a=a, b=b)
    data = load_data(str(tmp_path / "two.npz"), two_inputs())
    # float64 -> float32 and int32 -> int64 are the documented silent casts
    assert data.inputs["a"].dtype == np.float32 and data.inputs["b"].dtype == np.int64
    assert data.labels is None


def test_missing_input_is_named():
    with pytest.raises(DataError, match="input 'b'"):
        load_data({"a": np.zeros((3, 4), np.float32)}, two_inputs())


def test_unknown_key_lists_model_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 4), np.float32), b=np.zeros((2, 4), np.int64), c=np.zeros(2))
    with pytest.raises(DataError) as info:
        load_data(tmp_path / "d.npz", two_inputs())
    assert "'c'" in info.value.message and info.value.hint == "the model's inputs are: a, b"


def test_wrong_shape_names_input_and_both_shapes():
    with pytest.raises(DataError) as info:
        load_data({"input": np.zeros((100, 1, 9, 9), np.float32)}, classifier())
    assert info.value.message == "input 'input': data shape (100, 1, 9, 9) does not fit model shape [batch, 1, 8, 8]"
    with pytest.raises(DataError, match=r"data shape \(2, 8, 8\)"):
        load_data({"input": np.zeros((2, 8, 8), np.float32)}, classifier())


def test_wrong_dtype_is_refused():
    with pytest.raises(DataError, match="dtype int64 does not fit model dtype float32"):
        load_data({"input": np.zeros((2, 1, 8, 8), np.int64)}, classifier())
    with pytest.raises(DataError, match="dtype float32 does not fit model dtype int64"):
        load_data({"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 4), np.float32)}, two_inputs())


def test_sample_counts_must_agree():
    with pytest.raises(DataError, match="different sample counts"):
        load_data({"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 4), np.int64)}, two_inputs())
    with pytest.raises(DataError, match="3 labels for 2 samples"):
        load_data({"input": np.zeros((2, 1, 8, 8), np.float32), "labels": np.arange(3)}, classifier())


def test_npy_only_for_single_input(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert load_data(tmp_path / "x.npy", classifier()).inputs["input"].shape == (2, 1, 8, 8)
    with pytest.raises(DataError, match="inputs a, b"):
        load_data(tmp_path / "x.npy", two_inputs())


def test_pickled_npz_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "evil.npz", input=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="cannot read"):
        load_data(tmp_path / "evil.npz", classifier())


def test_sizes_are_checked_before_large_allocations(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "big.npz", input=np.zeros((64, 1, 8, 8), np.float32))
    monkeypatch.setenv("ONNXOPT_MEMORY_LIMIT", "8K")
    with pytest.raises(DataError, match="unpacks to"):
        load_data(tmp_path / "big.npz", classifier())
    with pytest.raises(DataError, match="synthetic data would need"):
        load_data("synthetic", symbolic_hw(), shapes={"image": [1, 3, 64, 64]})


def test_missing_path_and_bad_suffix(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        load_data(tmp_path / "nope.npz", classifier())
    assert info.value.hint
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="unsupported data file"):
        load_data(tmp_path / "d.txt", classifier())


def test_dataset_source_is_validated():
    raw = Dataset({"input": np.zeros((2, 1, 8, 8), np.float64)}, None, "mine")
    data = load_data(raw, classifier())
    assert data.inputs["input"].dtype == np.float32 and data.source == "mine"
    with pytest.raises(DataError, match="input 'input'"):
        load_data(Dataset({"input": np.zeros((2, 1, 7, 8), np.float32)}), classifier())


@pytest.mark.skipif(not (DIGITS_MODEL.exists() and DIGITS_DATA.exists()),
                    reason="models/digits_cnn.onnx or models/digits_eval.npz not built yet (models/train_digits.py)")
def test_real_digits_eval_data_fits_its_model():
    model = onnx.load(DIGITS_MODEL)
    data = load_data(DIGITS_DATA, model, limit=40)
    assert len(data) == 40 and data.labels is not None and data.labels.shape == (40,)
    feed = next(iter(data.feeds(input_specs(model), batch_size=8)))
    assert feed["input"].shape[0] == 8


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_flagged():
    model = classifier()
    one, two = load_data("synthetic:n=4,seed=3", model), load_data("synthetic:n=4,seed=3", model)
    np.testing.assert_array_equal(one.inputs["input"], two.inputs["input"])
    assert one.synthetic and "seed=3" in one.source and len(one) == 4
    assert one.inputs["input"].shape == (4, 1, 8, 8)  # batch dim folded into the sample axis
    other = load_data("synthetic", model, seed=4)
    assert len(other) == 8 and not np.array_equal(other.inputs["input"][:4], one.inputs["input"])
    assert len(load_data("synthetic", model, limit=2)) == 2


def test_synthetic_dtypes():
    data = load_data("synthetic", two_inputs(), synthetic_samples=50)
    b = data.inputs["b"]
    assert b.dtype == np.int64 and b.min() >= 0 and b.max() < 10
    assert load_data("synthetic", identity(TensorProto.FLOAT16, [2, 3])).inputs["x"].dtype == np.float16
    flags = load_data("synthetic", identity(TensorProto.BOOL, ["n", 16]), synthetic_samples=4).inputs["x"]
    assert flags.dtype == np.bool_ and flags.any() and not flags.all()
    # a fixed batch other than 1 keeps each sample a whole feed
    assert load_data("synthetic:n=3", identity(TensorProto.FLOAT16, [2, 3])).inputs["x"].shape == (3, 2, 3)


def test_synthetic_symbolic_dims_need_shapes():
    model = symbolic_hw()
    with pytest.raises(DataError) as info:
        load_data("synthetic", model)
    assert "'image'" in info.value.message and "H, W" in info.value.message
    assert info.value.hint == "pass --shape image=1x3x<H>x<W>"
    data = load_data("synthetic:n=2", model, shapes={"image": [1, 3, 5, 7]})
    assert data.inputs["image"].shape == (2, 3, 5, 7)
    with pytest.raises(DataError, match="does not fit"):
        load_data("synthetic", model, shapes={"image": [1, 4, 5, 7]})
    with pytest.raises(ConfigError, match="unknown input"):
        load_data("synthetic", model, shapes={"other": [1]})


def test_synthetic_spec_errors():
    assert parse_synthetic("synthetic:n=16,seed=3") == (16, 3)
    assert parse_synthetic("synthetic", n=5, seed=2) == (5, 2)
    for bad in ("synthetic:n=0", "synthetic:n=x", "synthetic:batch=2", "synthetic:n", "random"):
        with pytest.raises(ConfigError):
            parse_synthetic(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_synthetic_parser_fuzz_raises_only_config_errors(text):
    try:
        n, seed = parse_synthetic("synthetic:" + text)
    except ConfigError:
        return
    assert n >= 1 and seed >= 0


# ---------------------------------------------------------------- images


def _png(path: Path, color, size=(10, 6)) -> None:
    from PIL import Image

    Image.new("RGB", size, color).save(path)


@pytest.fixture
def image_folder(tmp_path):
    pytest.importorskip("PIL")
    _png(tmp_path / "b_red.png", (255, 0, 0))
    _png(tmp_path / "a_blue.png", (0, 0, 255))
    (tmp_path / "notes.md").write_text("ignored")
    return tmp_path


def test_image_folder_resizes_to_fixed_model_size(image_folder):
    data = load_data(image_folder, classifier(channels=3, size=4))
    x = data.inputs["input"]
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32 and data.labels is None
    # sorted by name: a_blue then b_red; scale 1/255 puts a full channel at 1.0
    np.testing.assert_allclose(x[0, 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[1, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[1, 1:], 0.0, atol=1e-6)


def test_image_folder_nhwc_bgr_and_normalization(image_folder):
    spec = "layout=NHWC,color=BGR,mean=0.5|0.5|0.5,std=0.5|0.5|0.5"
    x = load_data(image_folder, classifier(channels=3, size=4, layout="NHWC"), image_spec=spec).inputs["input"]
    assert x.shape == (2, 4, 4, 3)
    # red (255, 0, 0) in BGR order is (0, 0, 255) -> normalized (-1, -1, 1)
    np.testing.assert_allclose(x[1, 0, 0], [-1.0, -1.0, 1.0], atol=1e-6)
    # NHWC is inferred from the model when the spec leaves layout unset
    assert load_data(image_folder, classifier(channels=3, size=4, layout="NHWC")).inputs["input"].shape == (2, 4, 4, 3)


def test_image_folder_resize_crop_on_symbolic_model_and_gray(image_folder):
    x = load_data(image_folder, symbolic_hw(), image_spec=ImageSpec(resize=4, crop=(3, 2))).inputs["image"]
    assert x.shape == (2, 3, 3, 2)
    gray = load_data(image_folder, classifier(channels=1, size=5)).inputs["input"]
    assert gray.shape == (2, 1, 5, 5) and 0.0 < gray[1].mean() < 1.0


def test_image_folder_labels_file(image_folder):
    (image_folder / "labels.csv").write_text("file,label\nb_red.png,3\na_blue.png,7\n")
    data = load_data(image_folder, classifier(channels=3, size=4))
    np.testing.assert_array_equal(data.labels, [7, 3])
    (image_folder / "labels.csv").write_text("b_red.png,3\n")
    with pytest.raises(DataError, match="no label for a_blue.png"):
        load_data(image_folder, classifier(channels=3, size=4))


def test_image_folder_errors(image_folder):
    with pytest.raises(DataError, match="smaller than crop"):
        load_data(image_folder, symbolic_hw(), image_spec="crop=50")
    _png(image_folder / "c_big.png", (0, 255, 0), size=(20, 20))
    with pytest.raises(DataError, match="different sizes"):
        load_data(image_folder, symbolic_hw())
    (image_folder / "d_broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="d_broken.png"):
        load_data(image_folder, classifier(channels=3, size=4))
    with pytest.raises(DataError, match="one 4-D image input"):
        load_data(image_folder, two_inputs())


def test_empty_image_folder(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_data(tmp_path, classifier())


# ---------------------------------------------------------------- ImageSpec.parse


def test_image_spec_parse_full_form():
    spec = ImageSpec.parse(
        "resize=256,crop=224,layout=NCHW,color=BGR,scale=0.0039,mean=0.485|0.456|0.406,std=0.229|0.224|0.225"
    )
    assert spec.resize == 256 and spec.crop == 224 and spec.color == "BGR" and spec.scale == 0.0039
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert ImageSpec.parse("resize=240x320,scale=1/127.5,layout=nhwc,dtype=float16") == ImageSpec(
        resize=(240, 320), scale=1 / 127.5, layout="NHWC", dtype="float16")
    assert ImageSpec.parse("") == ImageSpec()


@pytest.mark.parametrize("text, match", [
    ("size=3", "keys: resize, crop, layout"),
    ("resize", "key=value"),
    ("layout=NCWH", "layout"),
    ("std=0|1|1", "std"),
    ("crop=0", "crop"),
    ("scale=1/0", "scale"),
    ("dtype=str", "dtype"),
    ("resize=2,resize=3", "twice"),
])
def test_image_spec_parse_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        ImageSpec.parse(text)


def test_image_spec_forbids_extra_fields():
    with pytest.raises(ValidationError):
        ImageSpec(size=3)


KEYS = st.sampled_from(["resize", "crop", "layout", "color", "scale", "mean", "std", "dtype", "x", ""])
VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["1/0", "nan", "inf", "2x", "x2", "0", "-3", "1e999",
                                                          "NHWC", "gray", "a|b", "|", "f8", "i4,i4", "(2)i4"]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.tuples(KEYS, VALUES), max_size=4).map(
    lambda items: ",".join(f"{k}={v}" for k, v in items))))
def test_image_spec_parse_fuzz_raises_only_config_errors(text):
    try:
        spec = ImageSpec.parse(text)
    except ConfigError:
        return
    assert isinstance(spec, ImageSpec) and spec.layout in ("NCHW", "NHWC")
