"""The one bridge to onnxruntime tools that want file paths, and the silencer for their chatter.

``onnxruntime.quantization`` (and ``quant_pre_process``) read and write model *files*, log through
the root logger and ``print``. Passes must stay in memory and quiet, so every call goes through
:func:`via_files`: the model is written into a private temporary folder, the tool runs there with
logging and stdout muted, and the result is loaded back fully into memory before the folder goes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2**31 - 1


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Mute onnxruntime.quantization's root-logger warnings and prints for the duration."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` (a path inside a private temp folder); external data above 2 GB."""
    large = model.ByteSize() >= PROTOBUF_LIMIT
    copy = model
    if large:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data")
    return path


def read_model(path: Path) -> onnx.ModelProto:
    """Load a model a tool wrote, with any external data pulled into memory."""
    model = onnx.load(str(path), load_external_data=True)
    return model


def via_files(model: onnx.ModelProto, tool: Callable[[Path, Path, Path], None]) -> onnx.ModelProto:
    """Run ``tool(input_path, output_path, workdir)`` on ``model`` in a private temp folder; return
    the output model in memory. The folder (augmented models, caches) is always removed."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-quant-") as tmp:
        work = Path(tmp)
        source = write_model(model, work / "input.onnx")
        target = work / "output.onnx"
        with quiet():
            tool(source, target, work)
        return read_model(target)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A private temporary folder for tools that need more than one file (calibration caches)."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-quant-") as tmp:
        yield Path(tmp)
