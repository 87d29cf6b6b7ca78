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
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import onnx
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from onnxopt.errors import ConfigError, OnnxOptError, PassError
from onnxopt.passes.measurer import Measurer
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
    """Base of every pass config: frozen, and unknown keys are errors.

    ``aliases`` maps an option's old name to its new one, or to ``(new name, function turning the old
    value into the new one)``: recipes and ``--passes`` specs written with the old name keep working,
    with a ``FutureWarning`` naming the new one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    aliases: ClassVar[dict[str, str | tuple[str, Callable[[Any], Any]]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed_options(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not cls.aliases or not set(cls.aliases) & set(data):
            return data
        data = dict(data)
        for old, spec in cls.aliases.items():
            if old in data:
                new, convert = (spec, None) if isinstance(spec, str) else spec
                if new in data:
                    raise ValueError(f"{old!r} is the old name of {new!r}: give only {new!r}")
                value = data.pop(old)
                data[new] = convert(value) if convert is not None else value
                warnings.warn(f"option {old!r} is deprecated: write {new!r} (as {new}={data[new]!r})",
                              FutureWarning, stacklevel=2)
        return data

    @classmethod
    def deprecated_options(cls) -> dict[str, str]:
        """Old option name -> the name that replaced it."""
        return {old: spec if isinstance(spec, str) else spec[0] for old, spec in cls.aliases.items()}


Progress = Callable[[str, float], None]


@dataclass
class PassContext:
    """What a pass may use besides the model: calibration data, target profile, seed, shapes, and
    the measurer that times models on the target (``onnxopt.optimize`` gives one for the profile)."""

    data: Any = None  # onnxopt.data.Dataset for calibration, or None
    profile: Any = None  # a device profile, when the target is known
    seed: int = 0
    shapes: Mapping[str, list[int]] | None = None
    progress: Progress | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    measurer: Measurer | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fresh(self) -> PassContext:
        """Same inputs, empty notes: one per pass run."""
        return PassContext(self.data, self.profile, self.seed, self.shapes, self.progress, measurer=self.measurer)

    def need_measurer(self, what: str) -> Measurer:
        """The measurer, or a ConfigError saying that ``what`` needs one (passes never build their own:
        timing belongs to the profiling layer)."""
        if self.measurer is None:
            raise ConfigError(f"{what} times models on the target and the pass context has no measurer",
                              "run it through onnxopt.optimize, or give PassContext(measurer="
                              "onnxopt.profiling.service.ProfileMeasurer(profile))")
        return self.measurer


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

    @classmethod
    def describe(cls) -> PassInfo:
        """What ``onnxopt passes`` and the tuner show: summary, options (type, default, tunable range)
        and the deprecated option names still accepted."""
        options = [OptionInfo(name=key, type=_type_name(f.annotation), default=f.default,
                              tunable=_tunable_text(cls.tunable[key]) if key in cls.tunable else None)
                   for key, f in cls.Config.model_fields.items()]
        return PassInfo(name=cls.name, summary=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                        options=options, deprecated=cls.Config.deprecated_options())

    def __repr__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.name}:{opts}" if opts else self.name


class OptionInfo(BaseModel):
    """One option of a pass: its type, default, and the tuner's range when it is tunable."""

    name: str
    type: str
    default: Any
    tunable: str | None = None  # e.g. "one of 1, 4, 8, 16" or "0.0 to 0.7"


class PassInfo(BaseModel):
    """A registered pass described: name, one-line summary, options, deprecated option names."""

    name: str
    summary: str
    options: list[OptionInfo]
    deprecated: dict[str, str] = {}  # old option name -> the name to write instead


def _type_name(annotation: Any) -> str:
    """A short type for people: ``qdq|qoperator or None`` rather than ``Optional[Literal[...]]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(v) for v in args)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is tuple:  # StrList: "a|b|c" on the command line, an array in a recipe
        return "list (a|b|c)"
    if origin is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _tunable_text(spec: Tunable) -> str:
    if isinstance(spec, Choice):
        return "one of " + ", ".join(str(v) for v in spec.values)
    scale = ", log scale" if spec.log else ""
    return f"{'integers ' if spec.integer else ''}{spec.low} to {spec.high}{scale}"


def make_config(pass_name: str, config_cls: type[PassConfig], options: Mapping[str, Any]) -> PassConfig:
    """Validate options into a config; errors name the pass, the option and the valid options."""
    valid = ", ".join(config_cls.model_fields) or "(none)"
    renamed = config_cls.deprecated_options()
    unknown = [k for k in options if k not in config_cls.model_fields and k not in renamed]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for pass {pass_name!r}", f"valid options: {valid}")
    both = [old for old, new in renamed.items() if old in options and new in options]
    if both:
        raise ConfigError(f"pass {pass_name!r}: {both[0]!r} is the old name of {renamed[both[0]]!r}",
                          f"give only {renamed[both[0]]!r}")
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
    """The passes by name. The built-in ones are all here: importing this module first runs the
    ``onnxopt.passes`` package, which imports every pass family."""
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
