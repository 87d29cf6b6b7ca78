"""Model I/O: every bad input gets its own one-line error and exit code; saving is atomic."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import errors
from onnxopt.model import fix_input_shapes, input_specs, load, parse_shapes, save, upgrade_opset
from tests.helpers import run_cli, tiny_classifier


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_classifier().SerializeToString())
    return path


def _assert_one_line_error(capsys, args, code, *fragments):
    rc, _, err = run_cli(args, capsys)
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_load_from_path_bytes_and_proto_agree(tiny_path):
    from_path = load(tiny_path)
    from_bytes = load(tiny_path.read_bytes())
    from_proto = load(tiny_classifier())
    assert from_path.SerializeToString() == from_bytes.SerializeToString() == from_proto.SerializeToString()
    assert [s.name for s in input_specs(from_path)] == ["x"]


def test_load_does_not_mutate_callers_proto():
    original = tiny_classifier()
    before = original.SerializeToString()
    load(original, shapes={"x": [2, 3, 12, 12]})
    assert original.SerializeToString() == before


def test_missing_file(capsys, tmp_path):
    with pytest.raises(errors.ModelNotFoundError):
        load(tmp_path / "nope.onnx")
    _assert_one_line_error(capsys, ["inspect", tmp_path / "nope.onnx"], 3, "not found")


def test_truncated_file(capsys, tmp_path, tiny_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(tiny_path.read_bytes()[:200])
    with pytest.raises(errors.NotOnnxError):
        load(bad)
    _assert_one_line_error(capsys, ["inspect", bad], 3, "not a readable ONNX model", "hint:")


def test_random_bytes(capsys, tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_one_line_error(capsys, ["inspect", bad], 3, "ONNX model")


def test_other_format_text_file(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    with pytest.raises(errors.NotOnnxError):
        load(bad)


def test_graph_without_nodes_or_outputs(capsys, tmp_path):
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    empty = helper.make_model(helper.make_graph([], "g", [], [output]))
    with pytest.raises(errors.InvalidModelError, match="no nodes"):
        load(empty)
    no_out = tiny_classifier()
    del no_out.graph.output[:]
    path = tmp_path / "noout.onnx"
    path.write_bytes(no_out.SerializeToString())
    _assert_one_line_error(capsys, ["inspect", path], 3, "no outputs")


def test_unknown_operator_domain_is_named(capsys, tmp_path):
    model = tiny_classifier()
    node = helper.make_node("FancyOp", ["y"], ["z"], domain="com.example.custom")
    model.graph.node.append(node)
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(errors.UnsupportedOperatorError):
        load(path)
    _assert_one_line_error(capsys, ["inspect", path], 3, "com.example.custom: FancyOp")


def test_model_too_large_is_refused_before_loading(capsys, tiny_path, monkeypatch):
    monkeypatch.setenv("ONNXOPT_MEMORY_LIMIT", "1K")
    with pytest.raises(errors.ModelTooLargeError):
        load(tiny_path)
    _assert_one_line_error(capsys, ["inspect", tiny_path], 3, "GiB")


def _external_model(folder, location: str):
    """A model whose weight w1 lives in an external file at ``location``."""
    model = tiny_classifier()
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    path = folder / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_folder_is_refused(capsys, tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _external_model(folder, location)
    with pytest.raises(errors.UnsafeModelError):
        load(path)
    _assert_one_line_error(capsys, ["inspect", path], 3, "outside the model's folder")


def test_external_data_symlink_out_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4 * 8 * 27)
    os.symlink(secret, folder / "weights.bin")
    with pytest.raises(errors.UnsafeModelError):
        load(_external_model(folder, "weights.bin"))


def test_missing_external_data_file(capsys, tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    with pytest.raises(errors.ModelNotFoundError):
        load(path)
    _assert_one_line_error(capsys, ["inspect", path], 3, "weights.bin", "missing")


def test_external_data_round_trip(tmp_path):
    model = load(tiny_classifier())
    target = save(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    stored = onnx.load(target, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    again = load(target)
    w = {t.name: numpy_helper.to_array(t) for t in again.graph.initializer}
    ref = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(np.array_equal(w[k], ref[k]) for k in ref)


def test_save_is_atomic_and_protects_input(tmp_path, tiny_path):
    model = load(tiny_path)
    with pytest.raises(errors.OutputExistsError):
        save(model, tiny_path, protect=[tiny_path])
    assert tiny_path.read_bytes() == tiny_classifier().SerializeToString()
    out = save(model, tmp_path / "out.onnx", protect=[tiny_path])
    assert load(out).SerializeToString() == model.SerializeToString()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "tiny.onnx"]  # no temp files left
    save(model, tiny_path, protect=[tiny_path], force=True)


def test_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    model = load(tiny_classifier())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save(model, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fix_input_shapes_and_errors():
    model = load(tiny_classifier())
    assert input_specs(model)[0].dims == ("N", 3, 12, 12)
    fixed = fix_input_shapes(model, {"x": [2, 3, 12, 12]})
    assert input_specs(fixed)[0].dims == (2, 3, 12, 12)
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [2, 10]
    with pytest.raises(errors.ConfigError, match="unknown input"):
        fix_input_shapes(model, {"nope": [1, 3, 12, 12]})
    with pytest.raises(errors.ConfigError, match="rank"):
        fix_input_shapes(model, {"x": [1, 3, 12]})
    with pytest.raises(errors.ConfigError, match="fixed dims"):
        fix_input_shapes(model, {"x": [1, 4, 12, 12]})


@pytest.mark.parametrize("text", ["x", "x=", "=1x2", "x=1xa", "x=0x3"])
def test_parse_shapes_rejects_bad_specs(text):
    with pytest.raises(errors.ConfigError):
        parse_shapes([text])


def test_parse_shapes_names_with_separators():
    assert parse_shapes(["input:0=1x3x8x8", "p2o.Dyn=2,3"]) == {"input:0": [1, 3, 8, 8], "p2o.Dyn": [2, 3]}


def test_opset_upgrade():
    model = load(tiny_classifier())
    with pytest.raises(errors.ConfigError):
        upgrade_opset(model, 9)
    upgraded = load(tiny_classifier(), opset=18)
    assert next(o.version for o in upgraded.opset_import if o.domain == "") == 18


@pytest.mark.parametrize("name", ["digits", "ppocr_cls", "light_resnet50", "light_squeezenet"])
def test_serialized_size_is_exact_without_reading_weights(name):
    from onnxopt.proto import serialized_size
    from tests.conftest import load_corpus

    model = load_corpus(name)
    assert serialized_size(model) == model.ByteSize()
    big = [t for t in model.graph.initializer if len(t.raw_data) > 4 * 4096]
    if big:
        big[0].doc_string = "x" * 300  # a 2-byte length prefix inside a stub
        assert serialized_size(model) == model.ByteSize()
