"""Safe model I/O: load, validate, save, and input specs.

This is the only module that reads or writes model files. ``load`` accepts a path, bytes or an
``onnx.ModelProto`` and always returns a fresh, checked ``ModelProto`` whose external data (if any)
is in memory; ``save`` writes atomically and refuses to clobber the model it came from.

Example::

    model = load("resnet.onnx", shapes={"data": [1, 3, 224, 224]})
    save(model, "resnet-fixed.onnx", protect=["resnet.onnx"])
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxopt.errors import (
    ConfigError,
    InvalidModelError,
    ModelNotFoundError,
    ModelTooLargeError,
    NotOnnxError,
    OutputExistsError,
    UnsafeModelError,
    UnsupportedOperatorError,
)
from onnxopt.proto import iter_tensors, serialized_size, skeleton

PROTOBUF_LIMIT = 2**31 - 1
# protobuf, numpy copies and the onnxruntime session each hold the weights once
MEMORY_FACTOR = 3
ModelSource = str | os.PathLike | bytes | onnx.ModelProto


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, numpy dtype and dims (int, symbolic name, or None)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None

    @property
    def is_dynamic(self) -> bool:
        return self.dims is None or any(not isinstance(d, int) for d in self.dims)

    def describe(self) -> str:
        dims = "?" if self.dims is None else "x".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.name}: {self.dtype} [{dims}]"


# ---------------------------------------------------------------- loading


def load(
    source: ModelSource,
    *,
    opset: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
) -> onnx.ModelProto:
    """Load and validate a model; raise a ``ModelError`` subclass with a one-line reason."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        base_dir = None
    elif isinstance(source, bytes | bytearray):
        model = _parse(bytes(source), "<bytes>")
        base_dir = None
    else:
        path = Path(source)
        model, base_dir = _read(path)
    _load_external_data(model, base_dir)
    if check:
        validate(model)
    if opset is not None:
        model = upgrade_opset(model, opset)
    if shapes:
        model = fix_input_shapes(model, shapes)
    return infer_shapes(model)


def _read(path: Path) -> tuple[onnx.ModelProto, Path]:
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}", "check the path")
    if path.is_dir():
        raise NotOnnxError(f"{path} is a folder, not an ONNX file", "pass the .onnx file inside it")
    _check_memory(path.stat().st_size, path)
    model = _parse(path.read_bytes(), str(path))
    _check_memory(path.stat().st_size + _external_bytes(model, path.parent), path)
    return model, path.parent


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    hint = "the file is truncated, corrupt or not an ONNX model; re-export it"
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise NotOnnxError(f"{where} is not a readable ONNX model ({exc})", hint) from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise NotOnnxError(f"{where} is not an ONNX model (no IR version or graph)", hint)
    return model


def available_memory() -> int:
    """Bytes we allow a model to use: ``$ONNXOPT_MEMORY_LIMIT`` or the system's available memory."""
    limit = os.environ.get("ONNXOPT_MEMORY_LIMIT")
    if limit:
        return parse_size(limit)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", text.lower())
    if not match:
        raise ConfigError(f"not a size: {text!r}", "use e.g. 512M or 8G")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[(match.group(2) or "")[:1]]
    return int(float(match.group(1)) * scale)


def _check_memory(nbytes: int, where: Path | str) -> None:
    needed, available = nbytes * MEMORY_FACTOR, available_memory()
    if needed > available:
        raise ModelTooLargeError(
            f"{where} needs about {needed / 2**30:.1f} GiB to load but only {available / 2**30:.1f} GiB is available",
            "free memory or use a machine with more",
        )


# ---------------------------------------------------------------- external data


def _external_tensors(model: onnx.ModelProto) -> list[tuple[onnx.TensorProto, dict[str, str]]]:
    return [
        (t, {e.key: e.value for e in t.external_data})
        for t in iter_tensors(model.graph)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]


def _safe_location(base_dir: Path, location: str) -> Path:
    """Resolve an external-data location, refusing anything that leaves the model's folder."""
    unsafe = UnsafeModelError(
        f"external-data location {location!r} points outside the model's folder; refused, not read",
        "keep external data files next to the model",
    )
    if not location or Path(location).is_absolute() or ".." in Path(location).parts or "\\" in location:
        raise unsafe
    root = base_dir.resolve()
    target = (root / location).resolve()  # follows symlinks
    if target != root and root not in target.parents:
        raise unsafe
    return target


def _external_bytes(model: onnx.ModelProto, base_dir: Path) -> int:
    total = 0
    for tensor, info in _external_tensors(model):
        target = _safe_location(base_dir, info.get("location", ""))
        if not target.is_file():
            raise ModelNotFoundError(
                f"external data file {info.get('location')!r} of tensor {tensor.name!r} is missing",
                "copy the model's .data file(s) next to the .onnx file",
            )
        total += int(info.get("length", 0)) or target.stat().st_size
    return total


def _load_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    tensors = _external_tensors(model)
    if not tensors:
        return
    if base_dir is None:
        raise ModelNotFoundError(
            "the model refers to external data files but was given without a folder",
            "load it from its path so the .data files can be found",
        )
    for tensor, info in tensors:
        target = _safe_location(base_dir, info.get("location", ""))
        offset, length = int(info.get("offset", 0)), info.get("length")
        with open(target, "rb") as handle:
            handle.seek(offset)
            data = handle.read(int(length)) if length is not None else handle.read()
        if length is not None and len(data) != int(length):
            raise InvalidModelError(
                f"external data for tensor {tensor.name!r} is truncated ({len(data)} of {length} bytes)",
                "re-export the model",
            )
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


# ---------------------------------------------------------------- validation


@functools.cache
def runnable_domains() -> frozenset[str]:
    """Operator domains this onnxruntime build has kernels for (asked once: ~900 schemas)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return frozenset({schema.domain for schema in ort_state.get_all_operator_schema()} | {"", "ai.onnx"})


def validate(model: onnx.ModelProto) -> None:
    """Structural checks, onnxruntime domain support, then the full onnx checker."""
    graph = model.graph
    if not graph.node:
        raise InvalidModelError("the graph has no nodes", "export the model again with its computation")
    if not graph.output:
        raise InvalidModelError("the graph has no outputs", "mark the tensors the model returns as outputs")
    local = {f.domain for f in model.functions}
    unknown: dict[str, set[str]] = {}
    for node in _all_nodes(graph):
        if node.domain not in local and node.domain not in runnable_domains():
            unknown.setdefault(node.domain, set()).add(node.op_type)
    if unknown:
        names = "; ".join(f"{d}: {', '.join(sorted(ops))}" for d, ops in sorted(unknown.items()))
        raise UnsupportedOperatorError(
            f"operator domains onnxruntime cannot run: {names}",
            "these need a custom-op library, which onnxopt never loads from a model",
        )
    try:
        if serialized_size(model) < PROTOBUF_LIMIT:
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(_strip_weights(model), full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"the ONNX checker rejects the model: {first}", "re-export the model") from None


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without initializer payloads, small enough for the in-memory checker."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(field)
    return light


# ---------------------------------------------------------------- shapes and opsets


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Best-effort onnx shape inference on the model's skeleton; the inferred value_info is copied
    back. A model it cannot handle is returned unchanged."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(result.graph.output, inferred.graph.output, strict=True):
        mine.CopyFrom(theirs)
    return result


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = default_opset(model)
    if opset == current:
        return model
    if opset < current:
        raise ConfigError(f"the model is already at opset {current}; cannot go down to {opset}")
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises bare RuntimeError/IndexError from C++
        raise InvalidModelError(f"opset upgrade {current} -> {opset} failed: {exc}", "try a lower opset") from None
    validate(converted)
    return converted


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # exporters write unknown dims as dim_param, as nothing, or as an invalid dim_value of -1
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
        for d in tensor_type.shape.dim
    )


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    elem = value.type.tensor_type.elem_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype("float32")
    return TensorSpec(value.name, dtype, _dims(value))


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs (IR<4 models also list initializers as inputs; those are skipped)."""
    weights = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in weights]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def parse_shapes(items: Iterable[str]) -> dict[str, list[int]]:
    """``["x=1x3x224x224"]`` -> ``{"x": [1, 3, 224, 224]}``."""
    shapes: dict[str, list[int]] = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            values = [int(d) for d in dims.lower().replace(",", "x").split("x")]
        except ValueError:
            values = []
        if not sep or not name or not values or min(values) <= 0:
            raise ConfigError(f"bad shape {item!r}", "write NAME=1x3x224x224 with positive dims")
        shapes[name] = values
    return shapes


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """Fix symbolic input dims (onnxruntime's make_input_shape_fixed) and re-infer the rest."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, remove_invalid_dim_values

    specs = {s.name: s for s in input_specs(model)}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    remove_invalid_dim_values(fixed.graph)
    for name, dims in shapes.items():
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"--shape names unknown input {name!r}", f"inputs are: {', '.join(specs)}")
        if spec.dims is not None and len(spec.dims) != len(dims):
            raise ConfigError(f"input {name!r} has rank {len(spec.dims)}, --shape gives {len(dims)} dims")
        for have, want in zip(spec.dims or (), dims, strict=False):
            if isinstance(have, int) and have != want:
                raise ConfigError(f"input {name!r} has fixed dims {spec.describe()}; --shape gives {dims}")
        # set this input's dims directly: onnxruntime's make_input_shape_fixed rewrites every dim that
        # shares the symbol, and exporters reuse one symbol ("?") for unrelated dims
        shape = next(v for v in fixed.graph.input if v.name == name).type.tensor_type.shape
        while len(shape.dim) < len(dims):
            shape.dim.add()
        for dim, want in zip(shape.dim, dims, strict=True):
            dim.Clear()
            dim.dim_value = int(want)
    # clear stale intermediate shapes so inference recomputes them from the fixed inputs
    del fixed.graph.value_info[:]
    fixed = infer_shapes(fixed)
    fix_output_shapes(fixed)
    return fixed


# ---------------------------------------------------------------- saving


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    protect: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> Path:
    """Write atomically: temp files in the target folder, then rename. External data is used
    when asked for, and always above protobuf's 2 GB limit. ``protect`` lists files (the input
    model) that are never overwritten unless ``force``."""
    target = Path(path)
    for guarded in protect:
        if Path(guarded).exists() and target.exists() and os.path.samefile(guarded, target) and not force:
            raise OutputExistsError(f"refusing to overwrite the input model {target}",
                                    "choose another -o or pass --force")
    if not target.parent.is_dir():
        raise ConfigError(f"output folder {target.parent} does not exist", "create it first")
    if external_data is None:
        external_data = serialized_size(model) >= PROTOBUF_LIMIT
    data_name = target.name + ".data"
    tmp_dir = Path(tempfile.mkdtemp(prefix=".onnxopt-", dir=target.parent))
    try:
        tmp_model = tmp_dir / target.name
        if external_data:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(copy, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(tmp_dir / data_name, target.parent / data_name)
        else:
            with open(tmp_model, "wb") as handle:
                handle.write(model.SerializeToString())
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_model, target)
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()
    return target


def ort_optimize(model: onnx.ModelProto, level: str = "basic") -> onnx.ModelProto:
    """Run onnxruntime's offline graph optimizer (EP-independent at ``basic``) and reload."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory(prefix="onnxopt-ort-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)
