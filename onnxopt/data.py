"""Calibration and evaluation inputs, checked against the model they are for.

``load_data`` turns what a user has (arrays, an ``.npz``/``.npy`` file, a folder of images, or
``"synthetic"``) into a :class:`Dataset` whose arrays match the model's inputs in name, dtype and
fixed dims, so later layers never see a shape error from onnxruntime.

Each array's leading axis is the sample axis. If an array has the input's rank, that axis *is* the
model's batch axis (feeds are slices ``[i:i+batch]``); if it has one more axis, ``array[i]`` is one
whole feed.

Example::

    data = load_data("images/", model, image_spec="resize=256,crop=224", limit=64)
    for feed in data.feeds(input_specs(model)):
        session.run(None, feed)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import onnx

from onnxopt.errors import ConfigError, DataError
from onnxopt.images import IMAGE_SUFFIXES, ImageSpec, fit_to_model, image_array, read_labels
from onnxopt.model import TensorSpec, available_memory, input_specs

SYNTHETIC_KEYS = ("n", "seed")
# npz files from numpy/torch pipelines are often float64 or int32; these casts lose nothing a model needs
SILENT_CASTS = {("float64", "float32"), ("int32", "int64"), ("int64", "int32")}


@dataclass(frozen=True)
class Dataset:
    """Arrays for every model input (leading axis = samples), optional labels, and where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "in-memory arrays"
    synthetic: bool = False

    def __len__(self) -> int:
        return next((len(a) for a in self.inputs.values()), 0)

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        if n < 1:
            raise ConfigError(f"cannot take {n} samples", "use a limit of at least 1")
        labels = None if self.labels is None else self.labels[:n]
        return replace(self, inputs={k: v[:n] for k, v in self.inputs.items()}, labels=labels)

    def tail(self, n: int) -> Dataset:
        """The last ``n`` samples: calibrating passes read from the front, so these are held out
        from them when the set is large enough."""
        if n < 1:
            raise ConfigError(f"cannot take {n} samples", "use a limit of at least 1")
        labels = None if self.labels is None else self.labels[-n:]
        return replace(self, inputs={k: v[-n:] for k, v in self.inputs.items()}, labels=labels,
                       source=f"{self.source} (last {min(n, len(self))} of {len(self)} samples)")

    def batched(self, specs: Sequence[TensorSpec]) -> bool:
        """True when every array's leading axis is the model's batch axis (the ``ndim == rank`` rule)."""
        return not any(_stacked(self._array(s), s) for s in specs)

    def feeds(self, specs: Sequence[TensorSpec], batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """onnxruntime feed dicts, one per batch (or per sample for stacked arrays)."""
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} is not positive")
        stacked = {s.name: _stacked(self._array(s), s) for s in specs}
        step = 1 if any(stacked.values()) else batch_size
        for spec in specs:
            _check_batch(spec, stacked[spec.name], batch_size, len(self))
        for start in range(0, len(self), step):
            yield {
                name: self.inputs[name][start] if whole else self.inputs[name][start : start + step]
                for name, whole in stacked.items()
            }

    def _array(self, spec: TensorSpec) -> np.ndarray:
        if spec.name not in self.inputs:
            raise DataError(f"the data has no array for input {spec.name!r}", f"data keys: {', '.join(self.inputs)}")
        return self.inputs[spec.name]


def _stacked(array: np.ndarray, spec: TensorSpec) -> bool:
    """Whether ``array[i]`` is one whole feed; an input of unknown rank is assumed to have a batch axis."""
    if spec.dims is None or array.ndim == len(spec.dims):
        return False
    if array.ndim == len(spec.dims) + 1:
        return True
    raise DataError(f"input {spec.name!r}: data shape {array.shape} does not fit model shape {_model_shape(spec)}")


def _check_batch(spec: TensorSpec, stacked: bool, batch_size: int, samples: int) -> None:
    fixed = spec.dims[0] if spec.dims and isinstance(spec.dims[0], int) else None
    if stacked and batch_size != 1:
        raise DataError(f"input {spec.name!r}: each sample is a whole feed, so batch size must be 1")
    if not stacked and fixed is not None and fixed != batch_size:
        raise DataError(f"input {spec.name!r} has a fixed batch of {fixed} but batch size is {batch_size}",
                        f"use batch size {fixed}")
    if not stacked and fixed is not None and samples % fixed:
        raise DataError(f"input {spec.name!r} has a fixed batch of {fixed}; {samples} samples do not divide into it")


def _model_shape(spec: TensorSpec) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.dims or ()) + "]"


# ---------------------------------------------------------------- loading


DataSource = Dataset | Mapping[str, np.ndarray] | str | os.PathLike


def load_data(
    source: DataSource,
    model: onnx.ModelProto,
    *,
    limit: int | None = None,
    seed: int = 0,
    image_spec: ImageSpec | str | None = None,
    synthetic_samples: int = 8,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Dataset:
    """Load data for ``model`` from any supported source and check it against the model's inputs."""
    specs = input_specs(model)
    if isinstance(source, str) and (source == "synthetic" or source.startswith("synthetic:")):
        n, seed = parse_synthetic(source, n=synthetic_samples, seed=seed)
        return synthetic(specs, n=limit if limit is not None and limit < n else n, seed=seed, shapes=shapes)
    if isinstance(source, Dataset):
        data = source
    elif isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
        data = _from_arrays(arrays, specs, "in-memory arrays")
    elif isinstance(source, (str, os.PathLike)):
        data = _from_path(Path(source), specs, image_spec, limit)
    else:
        raise DataError(f"cannot use a {type(source).__name__} as data", "pass a path, a dict of arrays or 'synthetic'")
    if limit is not None:
        data = data.take(limit)
    return validate(data, specs)


def _from_path(path: Path, specs: list[TensorSpec], image_spec: ImageSpec | str | None, limit: int | None) -> Dataset:
    if not path.exists():
        raise DataError(f"data path {path} does not exist", "give an .npz, .npy, an image folder or 'synthetic'")
    if path.is_dir():
        spec = ImageSpec.parse(image_spec) if isinstance(image_spec, str) else image_spec
        return load_images(path, specs, spec, limit=limit)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise DataError(f"unsupported data file {path.name}", "use .npz (one array per input), .npy or an image folder")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {"": loaded}
        else:
            with loaded:
                _check_npz_size(loaded, path)
                arrays = {k: np.asarray(loaded[k]) for k in loaded.files}
    except (OSError, ValueError, EOFError, BadZipFile) as exc:
        # pickled object arrays land here too: never unpickle a data file
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}", "save plain numeric arrays") from None
    if "" in arrays:
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise DataError(f"{path.name} holds one array but the model has inputs {names}", "use an .npz by name")
        arrays = {specs[0].name: arrays[""]}
    return _from_arrays(arrays, specs, str(path))


def _check_npz_size(npz: np.lib.npyio.NpzFile, path: Path) -> None:
    """Sum the arrays' sizes from their headers, so a small compressed file cannot exhaust memory."""
    total = 0
    for name in npz.zip.namelist():
        with npz.zip.open(name) as member:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(member)
        total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if total > available_memory():
        raise DataError(f"{path} unpacks to {total / 2**30:.1f} GiB, more than the memory available",
                        "split the file or save fewer samples")


def _from_arrays(arrays: dict[str, np.ndarray], specs: list[TensorSpec], source: str) -> Dataset:
    names = {s.name for s in specs}
    labels = arrays.pop("labels") if "labels" in arrays and "labels" not in names else None
    return Dataset(arrays, labels, source, synthetic=False)


def validate(data: Dataset, specs: Sequence[TensorSpec]) -> Dataset:
    """Check names, dtypes, fixed dims and sample counts; apply the silent casts; return a new Dataset."""
    names = [s.name for s in specs]
    unknown = [k for k in data.inputs if k not in names]
    if unknown:
        raise DataError(f"data has arrays for unknown inputs {', '.join(map(repr, unknown))}",
                        f"the model's inputs are: {', '.join(names)}")
    inputs = {spec.name: _check_array(data._array(spec), spec) for spec in specs}
    counts = {name: len(a) for name, a in inputs.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"inputs have different sample counts: {counts}", "give every input the same number of samples")
    labels = data.labels
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 0 or (counts and len(labels) != next(iter(counts.values()))):
            raise DataError(f"{labels.size} labels for {len(data)} samples", "give one label per sample")
    if counts and next(iter(counts.values())) == 0:
        raise DataError(f"{data.source} has no samples")
    return replace(data, inputs=inputs, labels=labels)


def _check_array(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if array.ndim == 0:
        raise DataError(f"input {spec.name!r}: data is a scalar; it needs a leading sample axis")
    if array.dtype != spec.dtype:
        if (array.dtype.name, spec.dtype.name) not in SILENT_CASTS:
            raise DataError(f"input {spec.name!r}: data dtype {array.dtype} does not fit model dtype {spec.dtype}",
                            f"save the array as {spec.dtype}")
        array = array.astype(spec.dtype)
    if spec.dims is None:
        return array
    # the sample axis is the model's batch axis (ndim == rank) or an extra axis (ndim == rank + 1)
    model_dims = spec.dims if _stacked(array, spec) else spec.dims[1:]
    if any(isinstance(m, int) and m != d for m, d in zip(model_dims, array.shape[1:], strict=True)):
        raise DataError(f"input {spec.name!r}: data shape {array.shape} does not fit model shape {_model_shape(spec)}")
    return array


# ---------------------------------------------------------------- synthetic data


def parse_synthetic(text: str, *, n: int = 8, seed: int = 0) -> tuple[int, int]:
    """``"synthetic"`` or ``"synthetic:n=16,seed=3"`` -> ``(n, seed)``, defaults filled in."""
    name, _, options = text.partition(":")
    if name.strip() != "synthetic":
        raise ConfigError(f"not a synthetic data spec: {text!r}", "write synthetic or synthetic:n=16,seed=3")
    values = {"n": n, "seed": seed}
    for item in filter(None, (p.strip() for p in options.split(","))):
        key, sep, raw = (p.strip() for p in item.partition("="))
        if not sep or key not in SYNTHETIC_KEYS or not re.fullmatch(r"[0-9]{1,9}", raw):
            raise ConfigError(f"bad synthetic option {item!r}", f"keys: {', '.join(SYNTHETIC_KEYS)}, each =integer")
        values[key] = int(raw)
    if values["n"] < 1:
        raise ConfigError("synthetic data needs n >= 1")
    return values["n"], values["seed"]


def synthetic(
    specs: Sequence[TensorSpec], *, n: int = 8, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None
) -> Dataset:
    """Deterministic random inputs: floats ~ N(0, 1), integers in [0, 10), random bools."""
    known = {s.name for s in specs}
    for name in shapes or {}:
        if name not in known:
            raise ConfigError(f"--shape names unknown input {name!r}", f"inputs are: {', '.join(sorted(known))}")
    full = {s.name: _concrete_shape(s, (shapes or {}).get(s.name)) for s in specs}
    # a batch of 1 folds into the sample axis so batch_size > 1 stays possible; other batches stay per sample
    sample = {k: (n, *d[1:]) if d and d[0] == 1 else (n, *d) for k, d in full.items()}
    needed = sum(int(np.prod(shape)) * s.dtype.itemsize for s, shape in zip(specs, sample.values(), strict=True))
    if needed > available_memory():
        raise DataError(f"synthetic data would need {needed / 2**30:.1f} GiB", "use fewer samples or smaller --shape")
    rng = np.random.default_rng(seed)
    inputs = {s.name: _random(rng, s, sample[s.name]) for s in specs}
    return Dataset(inputs, None, f"synthetic (seed={seed}, n={n})", synthetic=True)


def _concrete_shape(spec: TensorSpec, given: Sequence[int] | None) -> tuple[int, ...]:
    hint = f"pass --shape {spec.name}=" + "x".join(
        str(d) if isinstance(d, int) else "1" if i == 0 else f"<{d or '?'}>" for i, d in enumerate(spec.dims or ())
    )
    if spec.dims is None and given is None:
        raise DataError(f"input {spec.name!r} has unknown rank; synthetic data needs its shape",
                        f"pass --shape {spec.name}=...")
    if given is not None:
        given = tuple(int(d) for d in given)
        dims = spec.dims if spec.dims is not None else given
        if len(given) != len(dims) or any(isinstance(m, int) and m != g for m, g in zip(dims, given, strict=True)):
            raise DataError(f"--shape {spec.name}={list(given)} does not fit model shape {_model_shape(spec)}", hint)
        return given
    dims = spec.dims or ()
    symbolic = [d or "?" for d in dims[1:] if not isinstance(d, int)]
    if symbolic:
        raise DataError(f"input {spec.name!r} has symbolic dims {', '.join(map(str, symbolic))}; "
                        "synthetic data needs concrete sizes", hint)
    return tuple(d if isinstance(d, int) else 1 for d in dims)


def _random(rng: np.random.Generator, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    kind = spec.dtype.kind
    if kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind in "iu":
        return rng.integers(0, 10, size=shape).astype(spec.dtype)
    if kind == "b":
        return rng.random(shape) < 0.5
    raise DataError(f"input {spec.name!r}: cannot make synthetic {spec.dtype} data", "give real data for this input")


# ---------------------------------------------------------------- image folders


def load_images(folder: Path, specs: Sequence[TensorSpec], spec: ImageSpec | None = None, *,
                limit: int | None = None) -> Dataset:
    """Decode, resize, crop and normalize every image in ``folder`` (sorted by name) for a one-input model."""
    if len(specs) != 1 or specs[0].dims is None or len(specs[0].dims) != 4:
        shapes = "; ".join(f"{s.name} {_model_shape(s)}" for s in specs)
        raise DataError(f"an image folder feeds one 4-D image input; the model has {shapes}", "use an .npz file")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    files = files[:limit] if limit is not None else files
    spec = fit_to_model(spec or ImageSpec(), specs[0])
    labels = read_labels(folder, files)
    arrays = [image_array(path, spec) for path in files]
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"images in {folder} have different sizes", "set resize=... and crop=... in the image spec")
    return Dataset({specs[0].name: np.concatenate(arrays)}, labels, str(folder), synthetic=False)
