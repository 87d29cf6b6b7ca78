"""The search space: the registered passes' ``tunable`` options plus the profile's session settings.

A point is a flat dict of dimension name -> value (``"prune.ratio": 0.3``, ``"precision": "int8"``,
``"session.graph_optimization_level": "all"``). Options of a pass that the point switches off are
irrelevant; :meth:`Space.canonical` drops them, so two points that build the same pipeline share one
cache key. The space becomes one ``ng.p.Dict`` for nevergrad, or an exhaustive grid (a ``Range`` is
discretized with its stated step).

Example::

    space = build_space(get_profile("cpu-1t"))
    point = space.default()
    spec, session = space.pipeline(point), space.session(point)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxopt.errors import ConfigError
from onnxopt.tunable import Choice, Range

# pipeline order: precision is one choice (int8 and fp16 exclude each other)
PRUNE_OPTIONS = ("ratio", "round_to", "criterion", "strategy")
PRECISIONS = ("fp32", "int8", "fp16")
# session settings worth searching; threads only where the profile leaves them to the machine
SESSION_DIMS = {
    "graph_optimization_level": ("all", "extended", "basic"),
    "enable_mem_pattern": (True, False),
    "enable_cpu_mem_arena": (True, False),
}
MULTI_THREAD_DIMS = {"allow_spinning": (True, False), "execution_mode": ("sequential", "parallel")}
RANGE_STEP = 0.1  # grid step of a Range dimension (stated in the report)
MAX_GRID = 100_000  # raw grid points enumerated for --strategy grid


@dataclass(frozen=True)
class Dim:
    """One searched dimension; ``when`` is (dimension, values) under which it matters."""

    name: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    default: Any = None
    when: tuple[str, tuple] | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def grid(self) -> tuple:
        if not self.is_range:
            return self.values
        count = int(round((self.high - self.low) / self.step))
        return tuple(round(self.low + i * self.step, 6) for i in range(count + 1))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "default": self.default}
        if self.is_range:
            out.update(low=self.low, high=self.high, grid_step=self.step)
        else:
            out["values"] = list(self.values)
        if self.when:
            out["when"] = f"{self.when[0]} in {list(self.when[1])}"
        return out


@dataclass
class Space:
    dims: list[Dim]
    fixed: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def default(self) -> dict[str, Any]:
        return self.canonical({d.name: d.default for d in self.dims})

    def active(self, dim: Dim, point: Mapping[str, Any]) -> bool:
        if dim.when is None:
            return True
        parent, values = dim.when
        return point.get(parent) in values

    def canonical(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """Only the dimensions that matter for this point (plus the fixed ones), in a stable order."""
        full = {**{d.name: d.default for d in self.dims}, **self.fixed, **{k: _plain(v) for k, v in point.items()}}
        kept = {d.name: full[d.name] for d in self.dims if self.active(d, full)}
        kept.update({k: v for k, v in self.fixed.items() if k not in kept})
        return dict(sorted(kept.items()))

    def contains(self, point: Mapping[str, Any]) -> bool:
        """The point is canonical here: every active dimension holds one of its values, fixed ones match."""
        full = self.canonical(point)
        if full != {k: _plain(v) for k, v in point.items()}:
            return False
        for dim in self.dims:
            if not self.active(dim, full):
                continue
            value = full.get(dim.name)
            inside = dim.low <= value <= dim.high if dim.is_range else value in dim.values
            if not inside:
                return False
        return all(full.get(k) == v for k, v in self.fixed.items())

    def key(self, point: Mapping[str, Any]) -> str:
        return json.dumps(self.canonical(point), sort_keys=True)

    def grid(self) -> list[dict[str, Any]]:
        """Every distinct canonical point, in a deterministic order (refused past ``MAX_GRID`` raw points)."""
        if self.grid_size() > MAX_GRID:
            raise ConfigError(f"the grid has {self.grid_size():,} points before canonicalization (at most "
                              f"{MAX_GRID:,} are enumerated)", "narrow the space with --recipe (fix/values/range), "
                              "or use another --strategy")
        seen: dict[str, dict[str, Any]] = {}
        names = self.names()
        for values in itertools.product(*(d.grid() for d in self.dims)):
            point = self.canonical(dict(zip(names, values, strict=True)))
            seen.setdefault(json.dumps(point, sort_keys=True), point)
        return list(seen.values())

    def grid_size(self) -> int:
        return math.prod(len(d.grid()) for d in self.dims)

    def parametrization(self, seed: int):
        """One ``ng.p.Dict``: ordered numeric choices as ``TransitionChoice``, ranges as bounded scalars."""
        import nevergrad as ng

        params: dict[str, Any] = {}
        for dim in self.dims:
            if dim.is_range:
                params[dim.name] = ng.p.Scalar(init=dim.default, lower=dim.low, upper=dim.high)
            elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in dim.values):
                params[dim.name] = ng.p.TransitionChoice(list(dim.values))
            else:
                params[dim.name] = ng.p.Choice(list(dim.values))
        parametrization = ng.p.Dict(**params)
        parametrization.random_state.seed(seed)
        return parametrization

    def pipeline(self, point: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The (pass name, options) steps this point builds."""
        p = self.canonical(point)
        steps: list[tuple[str, dict[str, Any]]] = []
        if p.get("simplify.enabled", True):
            steps.append(("simplify", _options(p, "simplify")))
        if p.get("prune.enabled"):
            steps.append(("prune", _options(p, "prune")))
        precision = p.get("precision", "fp32")
        if precision == "int8":
            options = _options(p, "quantize")
            scheme = options.pop("scheme", None)
            if scheme:
                options.update(_scheme_options(scheme))
            if options.get("mode") == "dynamic":
                options = {k: v for k, v in options.items() if k in ("mode", "per_channel", "weight_type")}
            steps.append(("quantize", options))
        elif precision == "fp16":
            steps.append(("fp16", _options(p, "fp16")))
        return steps

    def spec(self, point: Mapping[str, Any]) -> str:
        """The pipeline as an ``--passes`` string (what a user would type to rebuild it)."""
        parts = []
        for name, options in self.pipeline(point):
            opts = ",".join(f"{k}={_spec_value(v)}" for k, v in options.items())
            parts.append(f"{name}:{opts}" if opts else name)
        return ",".join(parts) or "(input)"

    def is_input(self, point: Mapping[str, Any]) -> bool:
        """The point builds no pass and keeps the profile's session settings: it is the input model."""
        p = self.canonical(point)
        defaults = {d.name: d.default for d in self.dims if d.name.startswith("session.")}
        return not self.pipeline(p) and all(p.get(k) == v for k, v in defaults.items())

    def session(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The session settings this point sets (profile defaults fill the rest)."""
        p = self.canonical(point)
        return {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("session.")}


def _plain(value: Any) -> Any:
    """numpy scalars from nevergrad -> Python values, ranges rounded so cache keys are stable."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        value = round(value, 4)
    return value


def _options(point: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The pass's options in the point; None means "the pass's default" and is left out."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in point.items()
            if k.startswith(head) and k != head + "enabled" and v is not None}


def _spec_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _scheme_options(scheme: str) -> dict[str, Any]:
    """``"qdq-u8s8"`` -> format qdq, u8 activations, s8 weights (``"qdq-u16u8"``: u16 and u8)."""
    fmt, _, types = scheme.partition("-")
    match = re.fullmatch(r"([us]\d+)([us]\d+)", types)
    if not match:
        raise ConfigError(f"quant format {scheme!r} is not FORMAT-ACTWEIGHT", "e.g. qdq-u8s8")
    return {"format": fmt, "activation_type": match.group(1), "weight_type": match.group(2)}


# ---------------------------------------------------------------- building


def build_space(profile, recipe: Mapping[str, Any] | None = None) -> Space:
    """The space for ``profile`` from the registered passes' ``tunable`` declarations, then the recipe.

    The profile restricts it: fp16 only where ``accelerates.precisions`` has it, int8 only where it
    has int8, the int8 scheme (format and types) among ``accelerates.quant_formats``."""
    from onnxopt.passes import get_pass

    dims: list[Dim] = [Dim("simplify.enabled", (True, False), default=True)]
    dims += _pass_dims("simplify", get_pass("simplify"), when=("simplify.enabled", (True,)), skip=())
    dims.append(Dim("prune.enabled", (False, True), default=False))
    dims += _pass_dims("prune", get_pass("prune"), when=("prune.enabled", (True,)), skip=())
    precisions = [p for p in PRECISIONS if p == "fp32" or p in profile.accelerates.precisions]
    dims.append(Dim("precision", tuple(precisions), default="fp32"))
    if "int8" in precisions:
        dims += _quantize_dims(get_pass("quantize"), profile)
    if "fp16" in precisions:
        dims += _pass_dims("fp16", get_pass("fp16"), when=("precision", ("fp16",)), skip=())
    dims += _session_dims(profile)
    space = Space(dims)
    return apply_recipe(space, recipe) if recipe else space


def _pass_dims(prefix: str, cls, when, skip) -> list[Dim]:
    dims = []
    fields = cls.Config.model_fields
    for option, tunable in cls.tunable.items():
        if option in skip:
            continue
        default = fields[option].default
        dims.append(_dim(f"{prefix}.{option}", tunable, default, when))
    return dims


def _dim(name: str, tunable, default, when) -> Dim:
    if isinstance(tunable, Range):
        value = default if isinstance(default, int | float) and tunable.low <= default <= tunable.high else tunable.low
        return Dim(name, low=tunable.low, high=tunable.high, step=RANGE_STEP, default=value, when=when)
    assert isinstance(tunable, Choice)
    if default is None:  # the pass decides (e.g. round_to from the profile's channel block): a value of its own
        return Dim(name, (None, *tunable.values), default=None, when=when)
    value = default if default in tunable.values else tunable.values[0]
    return Dim(name, tuple(tunable.values), default=value, when=when)


def _quantize_dims(cls, profile) -> list[Dim]:
    when = ("precision", ("int8",))
    schemes = [f for f in profile.accelerates.quant_formats if not f.startswith("dynamic")]
    typed = ("format", "activation_type", "weight_type", "symmetric_activations")
    dims = _pass_dims("quantize", cls, when, skip=typed if schemes else ())
    if schemes:
        dims.append(Dim("quantize.scheme", tuple(schemes), default=schemes[0], when=when))
    if not any(f.startswith("dynamic") for f in profile.accelerates.quant_formats) and schemes:
        dims = [d if d.name != "quantize.mode" else Dim(d.name, ("static",), default="static", when=when)
                for d in dims]
    return dims


def _session_dims(profile) -> list[Dim]:
    settings = profile.session
    dims = [Dim(f"session.{name}", values, default=getattr(settings, name)) for name, values in SESSION_DIMS.items()]
    if settings.intra_op_threads == 0:
        cores = os.cpu_count() or 1
        threads = tuple(sorted({1, 2, 4, cores} & set(range(1, cores + 1))))
        dims.append(Dim("session.intra_op_threads", threads, default=threads[-1]))
    if settings.intra_op_threads != 1:
        dims += [Dim(f"session.{n}", v, default=getattr(settings, n)) for n, v in MULTI_THREAD_DIMS.items()]
    return [_with_default_first(d) for d in dims]


def _with_default_first(dim: Dim) -> Dim:
    values = (dim.default, *[v for v in dim.values if v != dim.default])
    return Dim(dim.name, values, default=dim.default, when=dim.when)


# ---------------------------------------------------------------- recipes


def apply_recipe(space: Space, recipe: Mapping[str, Any]) -> Space:
    """``{"fix": {dim: value}, "values": {dim: [..]}, "range": {dim: [low, high]}}``: fix, narrow or widen.

    A dimension the space lacks may be added by ``values``/``range`` when its prefix names a pass
    option (``"quantize.calib_size" = [32, 64, 128]``); ``fix`` may also set such options."""
    unknown = set(recipe) - {"fix", "values", "range", "step"}
    if unknown:
        raise ConfigError(f"unknown recipe table(s) {sorted(unknown)}", "use fix, values, range, step")
    dims = {d.name: d for d in space.dims}
    fixed = dict(space.fixed)
    for name, values in (recipe.get("values") or {}).items():
        values = tuple(values)
        if not values:
            raise ConfigError(f"recipe values for {name!r} are empty")
        old = dims.get(name) or _new_dim(name)
        dims[name] = Dim(name, values, default=old.default if old.default in values else values[0], when=old.when)
    step = float(recipe.get("step", RANGE_STEP))
    for name, bounds in (recipe.get("range") or {}).items():
        low, high = (float(b) for b in bounds)
        if not low <= high:
            raise ConfigError(f"recipe range for {name!r} needs low <= high, got {bounds}")
        old = dims.get(name) or _new_dim(name)
        default = old.default if isinstance(old.default, int | float) and low <= old.default <= high else low
        dims[name] = Dim(name, low=low, high=high, step=step, default=default, when=old.when)
    for name, value in (recipe.get("fix") or {}).items():
        if name not in dims:
            _new_dim(name)  # validates the name
        dims.pop(name, None)
        fixed[name] = value
    return Space(list(dims.values()), fixed)


def _new_dim(name: str) -> Dim:
    """A dimension named by a recipe that the declared space lacks: it must be a real option."""
    from onnxopt.passes import get_pass

    prefix, _, option = name.partition(".")
    if prefix == "session":
        from onnxopt.profiling.profiles import SessionSettings

        if option not in SessionSettings.model_fields:
            raise ConfigError(f"unknown session setting {option!r} in the recipe",
                              f"valid: {', '.join(SessionSettings.model_fields)}")
        return Dim(name, (), default=SessionSettings.model_fields[option].default)
    if name in ("precision", "simplify.enabled", "prune.enabled"):
        return Dim(name, ())
    when = {"prune": ("prune.enabled", (True,)), "quantize": ("precision", ("int8",)),
            "fp16": ("precision", ("fp16",))}.get(prefix)
    cls = get_pass(prefix)
    if option not in cls.Config.model_fields:
        raise ConfigError(f"unknown option {option!r} of pass {prefix!r} in the recipe",
                          f"valid: {', '.join(cls.Config.model_fields)}")
    return Dim(name, (), default=cls.Config.model_fields[option].default, when=when)
