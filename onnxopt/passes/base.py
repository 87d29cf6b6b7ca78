"""The pass contract: a validated config, one ``apply``, a registry by name, and a record.

A pass is a small class::

    @register
    class Simplify(Pass):
        name = "simplify"
        Config = SimplifyConfig
        tunable = {"fold_bn": Choice((True, False))}

        def apply(self, model, ctx):
            ...
            return new_model

``apply`` takes and returns an ``onnx.ModelProto`` and never does I/O; what it wants to say goes
through ``ctx.note`` (a sentence for the report) and ``ctx.details`` (structured data). ``run_pass``
wraps it with timing, before/after costs and the checker, so every pass gets the same record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import onnx
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from onnxopt.errors import ConfigError, OnnxOptError, PassError
from onnxopt.proto import skeleton
from onnxopt.stats import ModelStats, model_stats
from onnxopt.tunable import Choice, Range, Tunable  # noqa: F401  (re-exported: passes declare tunables here)


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split("|") if item.strip())
    return value


# a list option written "a|b|c" on the command line, or as a TOML array in a recipe
StrList = Annotated[tuple[str, ...], BeforeValidator(_split_list)]


class PassConfig(BaseModel):
    """Base of every pass config: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Progress = Callable[[str, float], None]


@dataclass
class PassContext:
    """What a pass may use besides the model: calibration data, target profile, seed, shapes."""

    data: Any = None  # onnxopt.data.Dataset for calibration, or None
    profile: Any = None  # a device profile, when the target is known
    seed: int = 0
    shapes: Mapping[str, list[int]] | None = None
    progress: Progress | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fresh(self) -> PassContext:
        """Same inputs, empty notes: one per pass run."""
        return PassContext(self.data, self.profile, self.seed, self.shapes, self.progress)


class PassRecord(BaseModel):
    """What one pass did: its options, costs before and after, time, and its own notes."""

    name: str
    options: dict[str, Any]
    before: ModelStats
    after: ModelStats
    seconds: float
    notes: list[str] = []
    details: dict[str, Any] = {}


class Pass:
    """Base class; subclasses set ``name``, ``Config``, optional ``tunable`` and implement ``apply``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    tunable: ClassVar[dict[str, Tunable]] = {}

    def __init__(self, config: PassConfig | None = None, **options: Any):
        if config is not None and options:
            raise TypeError("give a config or options, not both")
        self.config = config if config is not None else make_config(self.name, self.Config, options)

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def __repr__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.name}:{opts}" if opts else self.name


def make_config(pass_name: str, config_cls: type[PassConfig], options: Mapping[str, Any]) -> PassConfig:
    """Validate options into a config; errors name the pass, the option and the valid options."""
    valid = ", ".join(config_cls.model_fields) or "(none)"
    unknown = [k for k in options if k not in config_cls.model_fields]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for pass {pass_name!r}", f"valid options: {valid}")
    try:
        return config_cls(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"pass {pass_name!r}, option {where!r}: {err['msg']} (got {err.get('input')!r})",
            f"valid options: {valid}",
        ) from None


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass findable by its ``name``; a duplicate name is an error."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    unknown = set(cls.tunable) - set(cls.Config.model_fields)
    if unknown:
        raise ValueError(f"{cls.__name__}.tunable names options its config lacks: {sorted(unknown)}")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Pass]]:
    from onnxopt import passes  # noqa: F401  (importing the package registers the built-in passes)

    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = registered()
    if name not in passes:
        raise ConfigError(f"unknown pass {name!r}", f"valid passes: {', '.join(passes)}")
    return passes[name]


# ---------------------------------------------------------------- running


def check_structure(model: onnx.ModelProto) -> None:
    """The full checker on the model's skeleton (fast on large models), plus the one thing the
    skeleton hides: every raw weight holds exactly as many bytes as its dims say."""
    onnx.checker.check_model(skeleton(model), full_check=True)
    for tensor in model.graph.initializer:
        if tensor.raw_data and tensor.data_type in SIZED_TYPES:
            expected = math.prod(tensor.dims) * SIZED_TYPES[tensor.data_type]
            if len(tensor.raw_data) != expected:
                raise onnx.checker.ValidationError(
                    f"initializer {tensor.name!r} holds {len(tensor.raw_data)} bytes, its dims need {expected}")


SIZED_TYPES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
               onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
               onnx.TensorProto.INT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT16: 2,
               onnx.TensorProto.UINT16: 2}


def run_pass(p: Pass, model: onnx.ModelProto, ctx: PassContext, before: ModelStats | None = None
             ) -> tuple[onnx.ModelProto, PassRecord]:
    """Apply one pass with timing, costs and the checker; any failure becomes a ``PassError``."""
    before = before or model_stats(model, ctx.shapes)
    local = ctx.fresh()
    start = time.perf_counter()
    try:
        result = p.apply(model, local)
        check_structure(result)
    except OnnxOptError as exc:
        if isinstance(exc, PassError):
            raise
        raise PassError(f"pass {p.name!r} failed: {exc.message}", exc.hint, pass_name=p.name) from exc
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise PassError(f"pass {p.name!r} produced an invalid model: {first}", pass_name=p.name) from exc
    except Exception as exc:  # not swallowed: re-raised typed, naming the pass, with the cause chained
        raise PassError(f"pass {p.name!r} failed: {type(exc).__name__}: {exc}", pass_name=p.name) from exc
    seconds = time.perf_counter() - start
    record = PassRecord(name=p.name, options=p.options(), before=before, after=model_stats(result, ctx.shapes),
                        seconds=round(seconds, 4), notes=local.notes, details=local.details)
    return result, record
