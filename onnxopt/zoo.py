"""Real models for tests and benchmarks, cached outside the repository.

No model hub is reachable here, so the corpus comes from three places: the repository's own
trained digits CNN (``models/``); PyPI wheels that ship ``.onnx`` files, such as rapidocr's
PP-OCR models exported from Paddle (:func:`fetch_wheel_models`, cached in :func:`cache_dir`); and
the onnx package's weightless "light" zoo, given deterministic weights by :func:`light_zoo_model`.

Example::

    model = corpus()["light_resnet50"]()   # loaders are lazy: nothing is fetched or built before
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
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxopt.errors import OnnxOptError

_REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = _REPO_ROOT / "models"
PIP_TIMEOUT_S = 600.0
_PPOCR_WHEEL = ("rapidocr-onnxruntime", "1.4.4")
_PPOCR_FILES = {  # the rec model is optional: only det and cls are in the corpus
    "ppocr_det": "ch_PP-OCRv4_det_infer.onnx",
    "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "ppocr_rec": "ch_PP-OCRv4_rec_infer.onnx",
}
_FLOAT = onnx.TensorProto.FLOAT


def cache_dir() -> Path:
    """``$ONNXOPT_CACHE`` if set, else ``~/.cache/onnxopt``; refused inside the source checkout."""
    env = os.environ.get("ONNXOPT_CACHE")
    path = Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "onnxopt"
    # Downloaded models are large and not ours to commit: keep them out of the git tree.
    if (_REPO_ROOT / ".git").exists() and path.is_relative_to(_REPO_ROOT):
        raise OnnxOptError(f"cache folder {path} is inside the repository", hint="set ONNXOPT_CACHE elsewhere")
    return path


def fetch_wheel_models(package: str, version: str, patterns: tuple[str, ...] = ("*.onnx",)) -> dict[str, Path]:
    """``{basename: path}`` of the files in the ``package==version`` wheel that match ``patterns``.

    pip downloads the wheel once; the files are kept in ``cache_dir()/wheels/PACKAGE-VERSION/``.
    """
    target = cache_dir() / "wheels" / f"{package}-{version}"
    if not all(_matching(target, (p,)) for p in patterns):
        _download_and_extract(package, version, patterns, target)
    found = _matching(target, patterns)
    if not found:
        raise OnnxOptError(f"{package}=={version} holds no file matching {', '.join(patterns)}")
    return found


def _matching(folder: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return {p.name: p for p in files if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)}


def _download_and_extract(package: str, version: str, patterns: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=target.parent) as tmp:
        wheel, staging = _pip_download(package, version, Path(tmp) / "wheel"), Path(tmp) / "extract"
        staging.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    name = Path(info.filename).name  # flattened: nothing lands outside staging
                    if any(fnmatch.fnmatch(name, p) for p in patterns) and not (staging / name).exists():
                        with zf.open(info) as src, open(staging / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            raise OnnxOptError(f"{wheel.name} is not a valid wheel: {exc}") from exc
        # The folder appears whole in one rename, so a killed run leaves no half cache; when it
        # exists already (other patterns, a concurrent run) each file is replaced atomically.
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
        # pip's last stderr line names the cause (no network, no such version): keep one line.
        lines = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines() or ["no output"]
        raise OnnxOptError(f"pip download {package}=={version} failed: {lines[-1]}",
                           hint="needs PyPI access, or an ONNXOPT_CACHE that holds the files") from exc
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise OnnxOptError(f"pip download {package}=={version} gave no wheel")
    return wheels[0]


def ppocr_models() -> dict[str, Path]:
    """PP-OCRv4 text detection, the direction classifier and, if shipped, recognition."""
    files = fetch_wheel_models(*_PPOCR_WHEEL)
    missing = [_PPOCR_FILES[k] for k in ("ppocr_det", "ppocr_cls") if _PPOCR_FILES[k] not in files]
    if missing:
        raise OnnxOptError(f"{'=='.join(_PPOCR_WHEEL)} lacks {', '.join(missing)}")
    return {key: files[name] for key, name in _PPOCR_FILES.items() if name in files}


def _light_dir() -> Path:
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def light_zoo_names() -> list[str]:
    """Architectures the installed onnx package ships as ``light_<name>.onnx``."""
    return sorted(p.stem.removeprefix("light_") for p in _light_dir().glob("light_*.onnx"))


def light_zoo_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light zoo model with deterministic random weights; the same ``seed`` gives the same bytes.

    The files are IR 3, which lists every initializer among the graph inputs; ``OC2_DUMMY_<n>``
    is one of them, an int64 Reshape target shape named by Caffe2's ONNX converter. Inputs that
    are initializers are dropped and the IR raised to 4, the first that allows it; the opset
    stays 9. Takes 1-10 s (VGG-19's 548 MB is the slowest).
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
    """Replace float ``ConstantOfShape`` nodes by data-less initializers for :func:`_draw_weights`,
    and fold ``Reshape(weight, shape)`` (inception_v1's FC weight) so the fan-in reads directly."""
    inits = {t.name: t for t in graph.initializer}
    dead = []
    for i, node in enumerate(graph.node):
        dims, const = None, [inits.get(n) for n in node.input]
        float_fill = all(a.t.data_type == _FLOAT for a in node.attribute)  # no value attribute: float zeros
        if node.op_type == "ConstantOfShape" and const[0] is not None and float_fill:
            dims = numpy_helper.to_array(const[0]).tolist()
        elif node.op_type == "Reshape" and None not in const and const[0].data_type == _FLOAT:
            dims = numpy_helper.to_array(const[1]).tolist()
            dims = dims if min(dims) > 0 else None  # a 0 / -1 target: leave that Reshape in place
        if dims is not None:
            inits[node.output[0]] = onnx.TensorProto(name=node.output[0], data_type=_FLOAT, dims=dims)
            graph.initializer.append(inits[node.output[0]])
            dead.append(i)
    for i in reversed(dead):
        del graph.node[i]


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


def _draw_weights(graph: onnx.GraphProto, seed: int) -> None:
    """Fill every float initializer by role. The few small tensors the light files kept are
    trained values (BN variances of 1e-12 among them) that mean nothing beside random weights."""
    consumers = _consumers(graph)
    for tensor in graph.initializer:
        if tensor.data_type == _FLOAT:
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
        # BN scale (and variance, until calibrated), and Caffe's Scale layer (Unsqueeze -> Mul).
        return rng.random(shape, dtype=np.float32) + np.float32(0.5)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)  # biases, BN shift, the rest


def _calibrate(model: onnx.ModelProto, seed: int) -> None:
    """Set BN statistics and the classifier's scale from one forward pass on a seeded input.

    Role-based draws alone let activations drift: ResNet-50's residual sums reach 1e4 and every
    softmax comes out one-hot. Like a trained network's running statistics, each BN gets the mean
    and variance of what reaches it (nodes run one at a time, so upstream layers are calibrated
    already), and the classifier is scaled to unit-variance logits. The sums run in numpy, so
    bytes repeat for one numpy build and CPU.
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
            results = [results[0] * np.float32(scale)]
        values.update(zip(node.output, results, strict=True))
        for name in node.input:  # free activations once read: DenseNet would hold hundreds
            if name not in inits and all(user is node for user, _ in consumers[name]):
                values.pop(name, None)


def _set(inits: dict, values: dict, name: str, array: np.ndarray) -> None:
    values[name] = array.astype(np.float32)
    inits[name].CopyFrom(numpy_helper.from_array(values[name], name))


def _run_node(node: onnx.NodeProto, args: list[np.ndarray], opset: int) -> list[np.ndarray]:
    """One node through onnx.reference at the model's opset (Unsqueeze and Softmax changed since 9)."""
    if node.op_type in ("MaxPool", "AveragePool") and (pooled := _pool(node, args[0])) is not None:
        return [pooled]
    io = [[onnx.helper.make_empty_tensor_value_info(n) for n in names] for names in (node.input, node.output)]
    graph = onnx.helper.make_graph([node], "node", *io)
    return ReferenceEvaluator(graph, opsets={"": opset}).run(None, dict(zip(node.input, args, strict=True)))


def _pool(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray | None:
    """2-D pooling in numpy: onnx.reference's loops in Python take 30 s on Inception-v2, and in
    onnx 1.23 its pooling reads asymmetric pads ([0, 0, 1, 1]) wrongly. NaN pads are ignored by
    nanmax/nanmean as ONNX ignores pads (count_include_pad=0). None: not covered, use reference."""
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
    # Python's hash() is salted per process; sha256 gives the same stream in every run.
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    found: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            found.setdefault(name, []).append((node, slot))
    return found


def _final_consumer(name: str, consumers: dict) -> tuple[onnx.NodeProto, int]:
    """Look through Unsqueeze/Reshape to the op that gives a weight its role."""
    node, slot = consumers[name][0]
    while node.op_type in ("Unsqueeze", "Reshape") and slot == 0 and node.output[0] in consumers:
        node, slot = consumers[node.output[0]][0]
    return node, slot


def _digits_model() -> onnx.ModelProto:
    path = MODELS_DIR / "digits_cnn.onnx"
    if not path.is_file():
        raise OnnxOptError(f"{path} is missing", hint="run python models/train_digits.py")
    return onnx.load(str(path))


def _ppocr_model(key: str) -> onnx.ModelProto:
    return onnx.load(str(ppocr_models()[key]))


def corpus() -> dict[str, Callable[[], onnx.ModelProto]]:
    """Name -> lazy loader of every model the tests and benchmarks run on."""
    loaders: dict[str, Callable[[], onnx.ModelProto]] = {
        "digits": _digits_model,
        "ppocr_det": functools.partial(_ppocr_model, "ppocr_det"),
        "ppocr_cls": functools.partial(_ppocr_model, "ppocr_cls"),
    }
    for name in light_zoo_names():
        loaders[f"light_{name}"] = functools.partial(cached_light_zoo_model, name)
    return loaders


def cached_light_zoo_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """:func:`light_zoo_model`, kept in ``cache_dir()/light`` after the first build.

    The key names the onnx and numpy versions, since the calibration pass sums in numpy and the
    bytes are only promised to repeat for one build of both. Written atomically."""
    folder = cache_dir() / "light"
    path = folder / f"{name}-seed{seed}-onnx{onnx.__version__}-numpy{np.__version__}.onnx"
    if path.is_file():
        return onnx.load(str(path))
    model = light_zoo_model(name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        handle.write(model.SerializeToString())
    os.replace(handle.name, path)
    return model
