"""Pipelines: a list of passes built from a spec string or a TOML recipe, itself runnable as a pass.

The spec ``"simplify,prune:ratio=0.3,round_to=8,quantize:mode=static"`` and the recipe::

    [[pass]]
    name = "simplify"

    [[pass]]
    name = "prune"
    ratio = 0.3
    round_to = 8

build the same pipeline. In a spec, ``name:k=v`` starts a pass, a bare ``k=v`` adds an option
to the pass before it, and a bare ``name`` is a pass with default options.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from onnxopt.errors import ConfigError, PassError
from onnxopt.passes.base import Pass, PassContext, PassRecord, get_pass, run_pass
from onnxopt.stats import model_stats

PassSpec = tuple[str, dict[str, Any]]


def parse_spec(spec: str) -> list[PassSpec]:
    """Split a pass spec string into (name, options) pairs; values stay strings for the config."""
    steps: list[PassSpec] = []
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        head, colon, rest = token.partition(":")
        if colon and "=" not in head:
            steps.append((_pass_name(head, raw), {}))
            token = rest.strip()
            if not token:
                continue
        elif "=" not in token:
            steps.append((_pass_name(token, raw), {}))
            continue
        key, eq, value = token.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad pass spec item {raw.strip()!r}", "write name:key=value,key=value")
        if not steps:
            raise ConfigError(f"option {key.strip()!r} comes before any pass name", "start with a pass: name:key=value")
        steps[-1][1][key.strip()] = value.strip()
    if not steps:
        raise ConfigError("the pass spec is empty", "e.g. --passes simplify")
    return steps


def _pass_name(text: str, raw: str) -> str:
    name = text.strip()
    if not re.fullmatch(r"[A-Za-z][\w\-]*", name):
        raise ConfigError(f"bad pass name in {raw.strip()!r}", "pass names are words like simplify or prune")
    return name


def load_recipe(path: str | Path) -> list[PassSpec]:
    """Read a TOML recipe: ``[[pass]]`` tables with a ``name`` key, or ``passes = ["spec", ...]``."""
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    unknown = set(doc) - {"pass", "passes"}
    if unknown:
        raise ConfigError(f"recipe {path}: unknown key {sorted(unknown)[0]!r}", "use [[pass]] tables or passes = [...]")
    steps: list[PassSpec] = []
    for item in doc.get("passes", []):
        steps.extend(parse_spec(item) if isinstance(item, str) else [])
    for table in doc.get("pass", []):
        options = dict(table)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"recipe {path}: a [[pass]] table has no name", "add name = \"simplify\"")
        steps.append((name, options))
    if not steps:
        raise ConfigError(f"recipe {path} lists no passes")
    return steps


class Pipeline(Pass):
    """Passes run in order; a pipeline is a pass too. A failure names the pass and those before it."""

    name = "pipeline"

    def __init__(self, passes: Sequence[Pass]):
        super().__init__()
        self.passes = list(passes)

    def __repr__(self) -> str:
        return ",".join(repr(p) for p in self.passes)

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        model, records = self.run(model, ctx)
        ctx.details["passes"] = [r.model_dump() for r in records]
        return model

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, list[PassRecord]]:
        records: list[PassRecord] = []
        stats = model_stats(model, ctx.shapes)
        for index, p in enumerate(self.passes):
            if ctx.progress:
                ctx.progress(p.name, index / max(len(self.passes), 1))
            try:
                model, record = run_pass(p, model, ctx, before=stats)
            except PassError as exc:
                done = tuple(r.name for r in records)
                after = f" (after {', '.join(done)})" if done else ""
                raise PassError(exc.message + after, exc.hint, pass_name=p.name, completed=done) from exc
            records.append(record)
            stats = record.after
        if ctx.progress:
            ctx.progress("done", 1.0)
        return model, records


def build(spec: str | Sequence[PassSpec] | Sequence[Pass] | Pass) -> Pipeline:
    """A pipeline from a spec string, (name, options) pairs, pass objects, or one pass."""
    if isinstance(spec, Pipeline):
        return spec
    if isinstance(spec, Pass):
        return Pipeline([spec])
    steps = parse_spec(spec) if isinstance(spec, str) else list(spec)
    passes = [step if isinstance(step, Pass) else get_pass(step[0])(**step[1]) for step in steps]
    return Pipeline(passes)
