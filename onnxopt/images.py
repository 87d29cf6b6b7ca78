"""Images as model inputs: the preprocessing spec and decoding with Pillow (the ``images`` extra).

``ImageSpec`` says how to turn a picture into a tensor (resize, center crop, layout, color order,
scale, mean/std, dtype); ``image_array`` applies it to one file; ``read_labels`` reads an optional
``labels.txt``/``labels.csv`` beside the images. ``onnxopt.data.load_images`` builds a Dataset
from a folder with these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from onnxopt.errors import ConfigError, DataError
from onnxopt.model import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LABEL_FILES = ("labels.txt", "labels.csv")


# ---------------------------------------------------------------- image preprocessing spec


class ImageSpec(BaseModel):
    """How images become input tensors: resize (int = shorter side, or (height, width)), center crop,
    layout, channel order, then ``(pixel * scale - mean) / std`` and the cast to ``dtype``.

    Example: ``ImageSpec.parse("resize=256,crop=224,mean=0.485|0.456|0.406,std=0.229|0.224|0.225")``
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    dtype: str = "float32"

    @field_validator("resize", "crop")
    @classmethod
    def _positive(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sizes = value if isinstance(value, tuple) else () if value is None else (value,)
        if any(s < 1 for s in sizes):
            raise ValueError("sizes must be positive")
        return value

    @field_validator("scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not np.isfinite(value):
            raise ValueError("scale must be finite")
        return value

    @field_validator("mean", "std")
    @classmethod
    def _channels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or not all(np.isfinite(value)):
            raise ValueError("give 1 or one finite value per channel")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v == 0 for v in value):
            raise ValueError("std must not be 0")
        return value

    @field_validator("dtype")
    @classmethod
    def _numeric(cls, value: str) -> str:
        # only plain names reach numpy's dtype parser, which otherwise accepts struct and subarray syntax
        try:
            dtype = np.dtype(value) if re.fullmatch(r"[a-z]+[0-9]*", value) else None
        except TypeError:
            dtype = None
        if dtype is None:
            raise ValueError(f"unknown dtype {value!r}")
        if dtype.kind not in "fiu":
            raise ValueError(f"dtype {value!r} is not numeric")
        return dtype.name

    @classmethod
    def parse(cls, text: str) -> ImageSpec:
        """Build from the CLI form ``key=value,...``; tuples use ``|`` (mean, std) or ``x`` (sizes)."""
        valid = ", ".join(cls.model_fields)
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = (p.strip() for p in item.partition("="))
            if not sep:
                raise ConfigError(f"image spec item {item!r} is not key=value", f"keys: {valid}")
            if key not in cls.model_fields:
                raise ConfigError(f"unknown image spec key {key!r}; valid keys: {valid}")
            if key in values:
                raise ConfigError(f"image spec sets {key!r} twice")
            values[key] = _parse_value(key, raw)
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"][:1])
            raise ConfigError(f"bad image spec {field}: {first['msg']}", f"keys: {valid}") from None


def _parse_value(key: str, raw: str) -> object:
    try:
        if key in ("resize", "crop"):
            if raw.lower() in ("", "none"):
                return None
            sizes = tuple(int(p) for p in raw.lower().split("x"))
            return sizes[0] if len(sizes) == 1 else sizes
        if key in ("mean", "std"):
            return tuple(_number(p) for p in raw.split("|"))
        if key == "scale":
            return _number(raw)
        return raw.upper() if key in ("layout", "color") else raw
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ConfigError(f"bad value {raw!r} for image spec key {key!r}") from None


def _number(text: str) -> float:
    """A float, or a fraction like ``1/255``."""
    top, sep, bottom = text.partition("/")
    return float(top) / float(bottom) if sep else float(text)


def fit_to_model(spec: ImageSpec, input_spec: TensorSpec) -> ImageSpec:
    """Fill what the user left unset from the model: layout, grayscale, and the size when H and W are fixed."""
    dims, given, changes = input_spec.dims or (), spec.model_fields_set, {}
    if "layout" not in given and dims[3] in (1, 3) and dims[1] not in (1, 3):
        changes["layout"] = "NHWC"
    channels = dims[3] if changes.get("layout", spec.layout) == "NHWC" else dims[1]
    height, width = (dims[1], dims[2]) if changes.get("layout", spec.layout) == "NHWC" else (dims[2], dims[3])
    if "color" not in given and channels == 1:
        changes["color"] = "GRAY"
    if changes.get("color", spec.color) == "GRAY" and "mean" not in given and "std" not in given:
        changes.update(mean=(0.0,), std=(1.0,))
    if spec.resize is None and spec.crop is None and isinstance(height, int) and isinstance(width, int):
        changes["resize"] = (height, width)
    return spec.model_copy(update=changes)


def image_array(path: Path, spec: ImageSpec) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow", "pip install pillow") from None
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if spec.color == "GRAY" else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {' '.join(str(exc).split())}", "remove or fix the file") from None
    image = _resize_and_crop(image, spec, path)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels[:, :, ::-1] if spec.color == "BGR" else pixels
    channels = pixels.shape[2]
    for name, values in (("mean", spec.mean), ("std", spec.std)):
        if len(values) not in (1, channels):
            raise DataError(f"image spec {name} has {len(values)} values for {channels} channels")
    pixels = (pixels * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return pixels[None].astype(spec.dtype)


def _resize_and_crop(image, spec: ImageSpec, path: Path):  # PIL types stay out of the module's imports
    from PIL import Image

    if isinstance(spec.resize, int):
        ratio = spec.resize / min(image.size)
        image = image.resize((max(1, round(image.width * ratio)), max(1, round(image.height * ratio))),
                             Image.Resampling.BILINEAR)
    elif spec.resize is not None:
        image = image.resize((spec.resize[1], spec.resize[0]), Image.Resampling.BILINEAR)
    if spec.crop is not None:
        height, width = (spec.crop, spec.crop) if isinstance(spec.crop, int) else spec.crop
        if height > image.height or width > image.width:
            raise DataError(f"image {path} ({image.width}x{image.height} after resize) is smaller than crop "
                            f"{width}x{height}", "set a larger resize")
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return image


def read_labels(folder: Path, files: Sequence[Path]) -> np.ndarray | None:
    """Labels from ``labels.txt``/``labels.csv`` lines ``file,label`` (or whitespace); a header is allowed."""
    label_file = next((folder / n for n in LABEL_FILES if (folder / n).is_file()), None)
    if label_file is None:
        return None
    mapping: dict[str, int] = {}
    for number, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
        parts = [p.strip() for p in re.split(r"[,\t ]+", line.strip()) if p.strip()]
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            if number == 1:
                continue  # a header row such as "file,label"
            raise DataError(f"{label_file.name} line {number} is not 'file,label': {line.strip()!r}")
        mapping[parts[0]] = int(parts[1])
    missing = [f.name for f in files if f.name not in mapping]
    if missing:
        raise DataError(f"{label_file.name} has no label for {', '.join(missing[:5])}", "label every image or none")
    return np.asarray([mapping[f.name] for f in files], dtype=np.int64)
