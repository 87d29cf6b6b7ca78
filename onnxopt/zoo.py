"""Real models for tests and benchmarks, cached outside the repository.

Three sources, none of them a model hub (there is no internet here, only package registries):

- ``models/`` in the repository: the project's own trained digits CNN (``models/train_digits.py``).
- Wheels on PyPI that ship ``.onnx`` files, e.g. ``rapidocr-onnxruntime`` carries PaddleOCR's
  PP-OCR models exported by paddle2onnx. :func:`fetch_wheel_models` downloads the wheel with pip
  and extracts the models into :func:`cache_dir`.
- The ``onnx`` package's "light" zoo: classic architectures whose weights were replaced by
  ``ConstantOfShape`` (0.02 everywhere). :func:`light_zoo_model` gives them deterministic random
  weights, scaled so activations stay finite and input-dependent through deep stacks.

Example::

    loaders = corpus()
    model = loaders["light_resnet50"]()   # nothing is fetched or built until called
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxopt.errors import OnnxOptError

_REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = _REPO_ROOT / "models"
PIP_TIMEOUT_S = 600.0
_PPOCR_PACKAGE = ("rapidocr-onnxruntime", "1.4.4")
_PPOCR_FILES = {
    "ppocr_det": "ch_PP-OCRv4_det_infer.onnx",
    "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ppocr_rec": "ch_PP-OCRv4_rec_infer.onnx",
}
_PPOCR_REQUIRED = ("ppocr_det", "ppocr_cls")


def cache_dir() -> Path:
    """``$ONNXOPT_CACHE`` if set, else ``~/.cache/onnxopt``; refused inside the source checkout."""
    env = os.environ.get("ONNXOPT_CACHE")
    path = Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "onnxopt"
    # Downloaded models are large and not ours to commit: keep them out of the git tree.
    if (_REPO_ROOT / ".git").exists() and path.is_relative_to(_REPO_ROOT):
        raise OnnxOptError(f"cache folder {path} is inside the repository", hint="set ONNXOPT_CACHE elsewhere")
    return path


def fetch_wheel_models(package: str, version: str, patterns: tuple[str, ...] = ("*.onnx",)) -> dict[str, Path]:
    """Download ``package==version`` with pip and return ``{basename: path}`` of files matching ``patterns``.

    Extracted once into ``cache_dir()/wheels/PACKAGE-VERSION/``; later calls do not run pip.
    """
    target = cache_dir() / "wheels" / f"{package}-{version}"
    found = _matching_files(target, patterns)
    if not all(any(fnmatch.fnmatch(name, p) for name in found) for p in patterns):
        _download_and_extract(package, version, patterns, target)
        found = _matching_files(target, patterns)
    if not found:
        raise OnnxOptError(f"{package}=={version} holds no file matching {', '.join(patterns)}")
    return found


def _matching_files(folder: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}


def _download_and_extract(package: str, version: str, patterns: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=target.parent) as tmp:
        wheel = _pip_download(package, version, Path(tmp) / "wheel")
        staging = Path(tmp) / "extract"
        staging.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    name = Path(info.filename).name  # flatten: never write outside staging
                    if name and any(fnmatch.fnmatch(name, p) for p in patterns) and not (staging / name).exists():
                        with zf.open(info) as src, open(staging / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            raise OnnxOptError(f"{wheel.name} is not a valid wheel: {exc}") from exc
        # A complete folder appears in one rename, so a killed run leaves no half cache; if the
        # folder exists (other patterns, or a concurrent run), each file is replaced atomically.
        try:
            staging.rename(target)
        except OSError:
            for item in staging.iterdir():
                os.replace(item, target / item.name)


def _pip_download(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{package}=={version}", "-d", str(dest), "--quiet"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as exc:
        # pip's last stderr line names the cause (no network, no such version); keep it to one line.
        lines = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines() or ["no output"]
        raise OnnxOptError(f"pip download {package}=={version} failed: {lines[-1]}",
                           hint="needs PyPI access, or a filled ONNXOPT_CACHE") from exc
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise OnnxOptError(f"pip download {package}=={version} produced no wheel")
    return wheels[0]


def ppocr_models() -> dict[str, Path]:
    """PP-OCR text detection, direction classifier and (if shipped) recognition, from rapidocr's wheel."""
    files = fetch_wheel_models(*_PPOCR_PACKAGE)
    missing = [_PPOCR_FILES[k] for k in _PPOCR_REQUIRED if _PPOCR_FILES[k] not in files]
    if missing:
        raise OnnxOptError(f"{'=='.join(_PPOCR_PACKAGE)} lacks {', '.join(missing)}")
    return {key: files[name] for key, name in _PPOCR_FILES.items() if name in files}


def _light_dir() -> Path:
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def light_zoo_names() -> list[str]:
    """Architectures shipped as ``light_<name>.onnx`` by the installed onnx package."""
    return sorted(p.stem.removeprefix("light_") for p in _light_dir().glob("light_*.onnx"))


def light_zoo_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light zoo model with deterministic random weights; same ``seed`` -> identical bytes.

    The files are IR 3: every initializer, including the ``OC2_DUMMY_<n>`` int64 Reshape targets
    that Caffe2's ONNX converter named, is also listed as a graph input. Weights become
    initializers, dead tensors and initializer inputs are dropped, and the IR version is raised to
    4 (the first that lets initializers stay out of the inputs); the opset stays 9.
    """
    path = _light_dir() / f"light_{name}.onnx"
    if not path.is_file():
        raise OnnxOptError(f"no light zoo model {name!r}", hint=f"one of: {', '.join(light_zoo_names())}")
    model = onnx.load(str(path))
    _weights_to_placeholders(model.graph)
    _drop_dead(model.graph)
    model.ir_version = max(model.ir_version, 4)
    _draw_weights(model.graph, seed)
    _calibrate(model, seed)
    return model


def _weights_to_placeholders(graph: onnx.GraphProto) -> None:
    """Replace each float ``ConstantOfShape`` by a data-less initializer that
    :func:`_draw_weights` fills (a 0.02 fill first would be a second copy of VGG-19's 548 MB), and
    fold ``Reshape(weight, shape)`` (inception_v1's FC weight) so the consumer sees the real fan-in."""
    inits = {t.name: t for t in graph.initializer}
    dead = []
    for i, node in enumerate(graph.node):
        dims = None
        if node.op_type == "ConstantOfShape" and node.input[0] in inits and node.attribute \
                and node.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            dims = numpy_helper.to_array(inits[node.input[0]]).tolist()
        elif node.op_type == "Reshape" and all(n in inits for n in node.input) \
                and inits[node.input[0]].data_type == onnx.TensorProto.FLOAT:
            dims = numpy_helper.to_array(inits[node.input[1]]).tolist()
            dims = None if min(dims) < 1 else dims  # 0 / -1 targets: leave that Reshape alone
        if dims is not None:
            inits[node.output[0]] = onnx.TensorProto(name=node.output[0], data_type=onnx.TensorProto.FLOAT, dims=dims)
            graph.initializer.append(inits[node.output[0]])
            dead.append(i)
    for i in reversed(dead):
        del graph.node[i]


def _draw_weights(graph: onnx.GraphProto, seed: int) -> None:
    """Fill every float initializer by role. The few small tensors the light files kept are
    trained values (BN variances of 1e-12 among them) that mean nothing beside random weights."""
    consumers = _consumers(graph)
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            node, slot = _final_consumer(tensor.name, consumers)
            rng = np.random.default_rng(_stable_seed(seed, tensor.name))
            tensor.CopyFrom(numpy_helper.from_array(_sample(rng, tuple(tensor.dims), node, slot), tensor.name))


def _sample(rng: np.random.Generator, shape: tuple, node: onnx.NodeProto, slot: int) -> np.ndarray:
    op = node.op_type
    if op in ("Conv", "Gemm") and slot == 1:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        fan_in = int(np.prod(shape[1:])) if op == "Conv" or trans_b else shape[0]  # Conv: [out, in/g, kh, kw]
        # He-normal keeps ReLU stacks at unit scale; float32 draws avoid a float64 copy of VGG's FC.
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if (op == "BatchNormalization" and slot in (1, 4)) or op == "Mul":
        # BN scale (and variance until calibrated), and Caffe's Scale layer (Unsqueeze -> Mul).
        return rng.random(shape, dtype=np.float32) + np.float32(0.5)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)  # biases, BN shift, the rest


def _calibrate(model: onnx.ModelProto, seed: int) -> None:
    """Set BN statistics and the classifier's scale from one forward pass on a seeded input.

    Role-based draws alone let activations drift: ResNet-50's residual sums reach 1e4 and every
    softmax comes out one-hot. As a trained network's running statistics would, each BN gets the
    mean and variance of what reaches it (nodes run one by one with onnx.reference, so upstream
    layers are already calibrated), and the classifier is scaled to unit-variance logits.
    Reductions run in numpy, so bytes are identical for one numpy/BLAS build and CPU.
    """
    graph, opset = model.graph, next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inits = {t.name: t for t in graph.initializer}
    values = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    rng = np.random.default_rng(_stable_seed(seed, "calibration input"))
    for v in graph.input:
        values[v.name] = rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim], dtype=np.float32)
    consumers, outputs = _consumers(graph), {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            x = values[node.input[0]]
            axes = (0, *range(2, x.ndim))
            _set(inits, values, node.input[3], x.mean(axis=axes, dtype=np.float64))
            _set(inits, values, node.input[4], x.var(axis=axes, dtype=np.float64))
        results = _run_node(node, [values[n] for n in node.input], opset)
        if node.op_type in ("Conv", "Gemm") and _is_head(node, consumers, outputs):
            scale = 1.0 / max(float(np.std(results[0], dtype=np.float64)), 1e-12)
            for name in node.input[1:]:
                _set(inits, values, name, values[name] * scale)
            results = _run_node(node, [values[n] for n in node.input], opset)
        values.update(zip(node.output, results))
        for name in node.input:  # free activations early: DenseNet holds hundreds otherwise
            if name not in inits and all(user is node for user, _ in consumers[name]):
                values.pop(name, None)


def _set(inits: dict, values: dict, name: str, array: np.ndarray) -> None:
    values[name] = array.astype(np.float32)
    inits[name].CopyFrom(numpy_helper.from_array(values[name], name))


def _run_node(node: onnx.NodeProto, args: list[np.ndarray], opset: int) -> list[np.ndarray]:
    """Run one node with onnx.reference at the model's opset (Unsqueeze, Softmax changed since 9)."""
    pooled = _pool(node, args[0]) if node.op_type in ("MaxPool", "AveragePool") else None
    if pooled is not None:
        return [pooled]
    io = [[onnx.helper.make_empty_tensor_value_info(n) for n in names] for names in (node.input, node.output)]
    graph = onnx.helper.make_graph([node], "node", *io)
    return ReferenceEvaluator(graph, opsets={"": opset}).run(None, dict(zip(node.input, args)))


def _pool(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray | None:
    """2-D max/average pooling in numpy (onnx.reference loops in Python: 30 s for Inception-v2).

    NaN padding makes both ignore the pads, as ONNX does (count_include_pad=0); None for an
    attribute this does not cover, which then goes to onnx.reference.
    """
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if set(attrs) - {"kernel_shape", "pads", "strides"} or x.ndim != 4:
        return None
    (sh, sw), (top, left, bottom, right) = attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0))
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=np.nan)
    windows = sliding_window_view(padded, tuple(attrs["kernel_shape"]), axis=(2, 3))[:, :, ::sh, ::sw]
    return (np.nanmax if node.op_type == "MaxPool" else np.nanmean)(windows, axis=(-2, -1)).astype(x.dtype)


_HEAD_PATH = {"Relu", "Dropout", "Reshape", "Flatten", "AveragePool", "GlobalAveragePool", "Softmax"}


def _is_head(node: onnx.NodeProto, consumers: dict, outputs: set[str]) -> bool:
    """The classifier: only activation, pooling, reshape and softmax ops lie between it and an output."""
    name = node.output[0]
    while name not in outputs:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0][0].op_type not in _HEAD_PATH:
            return False
        name = users[0][0].output[0]
    return True


def _stable_seed(seed: int, name: str) -> int:
    # Python's hash() is salted per process; sha256 gives the same stream on every run.
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    found: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            found.setdefault(name, []).append((node, index))
    return found


def _final_consumer(name: str, consumers: dict) -> tuple[onnx.NodeProto, int]:
    """Look through shape-only ops (Unsqueeze, Reshape) to the op that gives the tensor its role."""
    node, index = consumers[name][0]
    while node.op_type in ("Unsqueeze", "Reshape") and index == 0 and node.output[0] in consumers:
        node, index = consumers[node.output[0]][0]
    return node, index


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove initializers no node reads, and graph inputs that are initializers or unread."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    inits = {t.name for t in graph.initializer}
    for i in reversed(range(len(graph.input))):
        if graph.input[i].name in inits or graph.input[i].name not in used:
            del graph.input[i]


def _digits_model() -> onnx.ModelProto:
    path = MODELS_DIR / "digits_cnn.onnx"
    if not path.is_file():
        raise OnnxOptError(f"{path} is missing", hint="run python models/train_digits.py")
    return onnx.load(str(path))


def _ppocr_loader(key: str) -> Callable[[], onnx.ModelProto]:
    return lambda: onnx.load(str(ppocr_models()[key]))


def corpus() -> dict[str, Callable[[], onnx.ModelProto]]:
    """Name -> lazy loader for every model the tests and benchmarks run on."""
    loaders: dict[str, Callable[[], onnx.ModelProto]] = {
        "digits": _digits_model,
        "ppocr_det": _ppocr_loader("ppocr_det"),
        "ppocr_cls": _ppocr_loader("ppocr_cls"),
    }
    for name in light_zoo_names():
        loaders[f"light_{name}"] = functools.partial(light_zoo_model, name)
    return loaders
