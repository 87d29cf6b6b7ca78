"""Device profiles: what to measure on, how, and what the target runs fast.

A profile is a TOML file (schema in docs/profiles.md) validated into :class:`Profile`. Shipped
profiles are package data (``onnxopt/profiling/profiles/``; the repository's ``profiles/`` links
there); users add folders with
``$ONNXOPT_PROFILES`` (os.pathsep-separated) or pass a ``.toml`` path. ``extends = "cpu"`` starts
from another profile and deep-merges tables over it (lists such as ``providers`` are replaced).

Example::

    prof = get_profile("cpu-1t")
    prof.session.intra_op_threads        # 1
    prof.accelerates.quant_formats       # ["qdq-u8s8", ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from onnxopt.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"  # package data; the repo's profiles/ links here
ENV_PATH = "ONNXOPT_PROFILES"
DEFAULT_PROFILE = "cpu"

# where each execution provider comes from; named in the error when it is missing
PROVIDER_PACKAGES = {
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT libraries installed)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml (Windows)",
    "QNNExecutionProvider": "onnxruntime-qnn (Windows on Snapdragon)",
    "CoreMLExecutionProvider": "onnxruntime (the macOS wheel)",
    "NnapiExecutionProvider": "onnxruntime-android (Maven AAR; not on PyPI)",
    "XnnpackExecutionProvider": "onnxruntime-android, or onnxruntime built with --use_xnnpack",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "WebGpuExecutionProvider": "onnxruntime-ep-webgpu (a plugin for onnxruntime >= 1.24.4; Linux needs libvulkan.so.1)",
}

Precision = Literal["fp32", "fp16", "bf16", "int8", "int16", "int4"]
OptionValue = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSpec(_Strict):
    """One execution provider of the chain, with onnxruntime's own provider-option keys.

    ``plugin`` names the Python module of a plugin EP package (onnxruntime 1.23+ loads these
    at run time, e.g. ``onnxruntime_ep_webgpu``): its ``get_library_path()`` is registered with
    onnxruntime and the provider is attached to the device it finds."""

    name: str
    options: dict[str, OptionValue] = {}
    plugin: str | None = None

    @field_validator("name")
    @classmethod
    def _provider_name(cls, value: str) -> str:
        if not value.endswith("ExecutionProvider"):
            raise ValueError(f"{value!r} is not an onnxruntime provider name (e.g. CUDAExecutionProvider)")
        return value

    def ort_options(self) -> dict[str, str]:
        """onnxruntime takes provider options as strings; booleans become "1"/"0"."""
        return {k: ("1" if v else "0") if isinstance(v, bool) else str(v) for k, v in self.options.items()}


class SessionSettings(_Strict):
    """onnxruntime SessionOptions; 0 threads means onnxruntime's default (all physical cores). The
    measurement child builds the SessionOptions from its dict form (``child.session_options``)."""

    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(0, ge=0)
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    graph_optimization_level: Literal["disable", "basic", "extended", "layout", "all"] = "all"
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    allow_spinning: bool = True
    config_entries: dict[str, str] = {}


class InputSettings(_Strict):
    """The shapes to measure at: batch size for a free batch dim, and fixed dims per input name."""

    batch_size: int = Field(1, ge=1)
    shapes: dict[str, list[int]] = {}
    samples: int = Field(4, ge=1)


class Protocol(_Strict):
    """When a measurement stops: after warm-up, at least ``min_repeats`` runs and ``min_time_s``, and
    the 95% CI of the median within ±``target_rel_ci`` of it; or when ``max_time_s`` is spent."""

    warmup: int = Field(10, ge=0)
    # and at least this long: the first seconds of a burst run slower (clock ramp-up, caches), which
    # a fixed count of fast runs does not cover (seen here: +45% on a 0.05 ms model)
    warmup_s: float = Field(0.5, ge=0)
    min_repeats: int = Field(30, ge=3)
    max_repeats: int = Field(100_000, ge=3)
    min_time_s: float = Field(1.0, ge=0)
    max_time_s: float = Field(20.0, gt=0)
    target_rel_ci: float = Field(0.01, gt=0, lt=1)
    timeout_s: float = Field(300.0, gt=0)


class Accelerates(_Strict):
    """What the target runs fast, so passes can pick defaults (e.g. quantization format)."""

    precisions: list[Precision] = ["fp32"]
    quant_formats: list[str] = []
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    # channel counts that are multiples of this run fastest (MLAS NCHWc blocks, tensor-core tiles);
    # structured pruning rounds kept channels to it
    channel_block: int | None = Field(default=None, ge=1, le=256)
    notes: str = ""


class EdgeSettings(_Strict):
    """Mobile/edge outputs: ORT-format conversion and the NNAPI/CoreML usability check."""

    ort_format: bool = False
    mobile_check: bool = False
    target_platform: Literal["arm", "amd64"] | None = None


class Profile(_Strict):
    """A validated device profile (see docs/profiles.md)."""

    name: str
    description: str = ""
    extends: str | None = None
    providers: list[ProviderSpec] = Field(default_factory=lambda: [ProviderSpec(name="CPUExecutionProvider")])
    allow_fallback: bool = False
    session: SessionSettings = SessionSettings()
    inputs: InputSettings = InputSettings()
    measure: Protocol = Protocol()
    accelerates: Accelerates = Accelerates()
    edge: EdgeSettings = EdgeSettings()
    source: str = ""

    @field_validator("providers")
    @classmethod
    def _non_empty(cls, value: list[ProviderSpec]) -> list[ProviderSpec]:
        if not value:
            raise ValueError("give at least one provider")
        return value

    @property
    def provider(self) -> str:
        """The provider this profile is about (the first of the chain)."""
        return self.providers[0].name


# ---------------------------------------------------------------- registry


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    return [*extra, SHIPPED_DIR]


def profiles() -> dict[str, Path]:
    """Every known profile name and its file; a user folder's name wins over a shipped one of the same name."""
    found: dict[str, Path] = {}
    for folder in search_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def get_profile(spec: str | os.PathLike | Profile | Mapping[str, Any] | None = None) -> Profile:
    """A profile by name, by ``.toml`` path, from a dict of the same keys, or as given."""
    if spec is None:
        spec = DEFAULT_PROFILE
    if isinstance(spec, Profile):
        return spec
    if isinstance(spec, Mapping):
        return _validate(_resolve(dict(spec), "<dict>", ()), "<dict>")
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        return load_profile_file(path)
    known = profiles()
    if str(spec) not in known:
        raise ConfigError(f"unknown profile {str(spec)!r}", f"known profiles: {', '.join(sorted(known))}")
    return load_profile_file(known[str(spec)])


def load_profile_file(path: Path, _chain: tuple[str, ...] = ()) -> Profile:
    return _validate(_resolve(_read_toml(path), str(path), _chain), str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"profile file {path} does not exist", "give a .toml path or a profile name")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"profile {path} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    return data


def _resolve(data: dict[str, Any], where: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """Apply ``extends`` (recursively, refusing cycles) by deep-merging this profile over its base."""
    base_name = data.get("extends")
    if base_name is None:
        return {**data, "source": where}
    if not isinstance(base_name, str):
        raise ConfigError(f"profile {where}: 'extends' must be a profile name or .toml path")
    if base_name in chain or base_name == data.get("name"):
        raise ConfigError(f"profile {where}: 'extends' makes a cycle ({' -> '.join((*chain, base_name))})")
    base_path = Path(base_name) if base_name.endswith(".toml") else profiles().get(base_name)
    if base_path is None:
        raise ConfigError(f"profile {where} extends unknown profile {base_name!r}",
                          f"known profiles: {', '.join(sorted(profiles()))}")
    base = _resolve(_read_toml(base_path), str(base_path), (*chain, str(data.get("name"))))
    base.pop("description", None)
    return {**_merge(base, data), "source": where}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(data: dict[str, Any], where: str) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(*_describe(exc, where)) from None


def _describe(exc: ValidationError, where: str) -> tuple[str, str | None]:
    """The first problem as 'profile X: key a.b: reason', with the valid keys when a key is unknown."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        return f"profile {where}: unknown key {key!r}", f"valid keys here: {', '.join(valid)}"
    return f"profile {where}: key {key!r}: {err['msg']}", None


def _valid_keys(parent: list[str]) -> list[str]:
    model: type[BaseModel] = Profile
    for part in parent:
        if part.isdigit():
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), model)
    return [k for k in model.model_fields if k != "source"]
