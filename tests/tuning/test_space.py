"""The search space: built from the passes' tunable options, restricted by the profile, canonical points,
recipes (fix / narrow / widen) and their errors, the grid's discretization."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxopt.errors import ConfigError
from onnxopt.passes import build
from onnxopt.profiling.profiles import get_profile, profiles
from onnxopt.tuning.space import build_space

SHIPPED = sorted(profiles())


def space_for(profile: str = "cpu-1t", recipe=None):
    return build_space(get_profile(profile), recipe)


def dims_of(space) -> dict:
    return {d.name: d for d in space.dims}


# ---------------------------------------------------------------- canonical points


def test_options_of_a_disabled_pass_are_dropped():
    space = space_for()
    on = space.canonical({"prune.enabled": True, "prune.ratio": 0.5, "precision": "int8", "quantize.mode": "dynamic"})
    assert on["prune.ratio"] == 0.5 and on["quantize.mode"] == "dynamic"
    off = space.canonical({**on, "prune.enabled": False, "precision": "fp32"})
    assert not [k for k in off if k.startswith(("prune.", "quantize.")) and k != "prune.enabled"]
    # two points that differ only in options of switched-off passes build the same thing: one cache key
    other = {**on, "prune.enabled": False, "prune.ratio": 0.1, "precision": "fp32", "quantize.mode": "static"}
    assert space.key({**on, "prune.enabled": False, "precision": "fp32"}) == space.key(other)
    assert space.pipeline(off) == space.pipeline(other)


def test_options_of_disabled_simplify_are_dropped():
    space = space_for()
    a = {**space.default(), "simplify.enabled": False, "simplify.ort": True}
    b = {**a, "simplify.ort": False}
    assert space.pipeline(a) == space.pipeline(b) == []
    assert space.key(a) == space.key(b)


def test_canonical_fills_defaults_and_makes_nevergrad_values_plain():
    space = space_for()
    point = space.canonical({"prune.enabled": np.bool_(True), "prune.ratio": np.float64(0.123456),
                             "prune.round_to": np.int64(8)})
    assert point["prune.ratio"] == pytest.approx(0.1235) and type(point["prune.ratio"]) is float
    assert type(point["prune.round_to"]) is int
    defaults = {d.name: d.default for d in space.dims}
    assert point["prune.criterion"] == defaults["prune.criterion"]
    assert point["session.graph_optimization_level"] == defaults["session.graph_optimization_level"]
    json.dumps(point)  # the key is JSON
    assert space.canonical(point) == point  # idempotent


def test_only_the_input_point_is_the_input():
    space = space_for()
    assert space.is_input({"simplify.enabled": False})
    assert not space.is_input({})  # the default simplifies
    assert not space.is_input({"simplify.enabled": False, "session.graph_optimization_level": "basic"})
    assert space.spec({"simplify.enabled": False}) == "(input)"


@pytest.mark.parametrize("profile", SHIPPED)
def test_sampled_points_build_valid_pipelines_and_their_spec_round_trips(profile):
    space = space_for(profile)
    parametrization = space.parametrization(seed=3)
    for _ in range(25):
        point = space.canonical(parametrization.sample().value)
        steps = space.pipeline(point)
        for dim in space.dims:  # every value lies in its dimension
            if dim.name in point:
                value = point[dim.name]
                assert dim.low <= value <= dim.high if dim.is_range else value in dim.values, (dim.name, value)
        from_steps = [p.config for p in build(steps).passes] if steps else []
        from_spec = [p.config for p in build(space.spec(point)).passes] if steps else []
        assert from_steps == from_spec, space.spec(point)


# ---------------------------------------------------------------- the profile restricts the space


@pytest.mark.parametrize("profile", SHIPPED)
def test_precisions_follow_the_profile(profile):
    prof, space = get_profile(profile), space_for(profile)
    dims = dims_of(space)
    precisions = set(dims["precision"].values)
    assert precisions == {"fp32"} | ({"int8", "fp16"} & set(prof.accelerates.precisions))
    assert any(n.startswith("fp16.") for n in dims) == ("fp16" in precisions)
    assert any(n.startswith("quantize.") for n in dims) == ("int8" in precisions)


def test_cpu_1t_searches_no_fp16_and_no_threads():
    dims = dims_of(space_for("cpu-1t"))
    assert "fp16" not in dims["precision"].values
    assert not [n for n in dims if n.startswith("fp16.")]
    assert get_profile("cpu-1t").session.intra_op_threads == 1
    assert not {"session.intra_op_threads", "session.allow_spinning", "session.execution_mode"} & set(dims)


def test_tensorrt_searches_fp16():
    dims = dims_of(space_for("tensorrt"))
    assert "fp16" in dims["precision"].values
    assert [n for n in dims if n.startswith("fp16.")]
    point = {"precision": "fp16", "fp16.auto": True}
    assert [name for name, _ in space_for("tensorrt").pipeline(point)] == ["simplify", "fp16"]


INT8_PROFILES = [p for p in SHIPPED if "int8" in get_profile(p).accelerates.precisions]


@pytest.mark.parametrize("profile", INT8_PROFILES)
def test_int8_schemes_come_from_the_profiles_quant_formats(profile):
    formats = get_profile(profile).accelerates.quant_formats
    dims = dims_of(space_for(profile))
    static = [f for f in formats if not f.startswith("dynamic")]
    if static:
        assert list(dims["quantize.scheme"].values) == static
        assert "quantize.format" not in dims and "quantize.activation_type" not in dims
    modes = set(dims["quantize.mode"].values)
    assert ("dynamic" in modes) == any(f.startswith("dynamic") for f in formats)


SCHEMES = [(p, s) for p in INT8_PROFILES for s in get_profile(p).accelerates.quant_formats
           if not s.startswith("dynamic")]


@pytest.mark.parametrize(("profile", "scheme"), SCHEMES)
def test_each_int8_scheme_builds_the_quantize_config_it_names(profile, scheme):
    space = space_for(profile)
    steps = dict(space.pipeline({"precision": "int8", "quantize.mode": "static", "quantize.scheme": scheme}))
    config = build([("quantize", steps["quantize"])]).passes[0].config
    fmt, _, types = scheme.partition("-")
    assert config.format == fmt
    assert f"{config.activation_type}{config.weight_type}" == types


# ---------------------------------------------------------------- recipes


def test_recipe_fixes_narrows_and_widens():
    recipe = {"fix": {"precision": "int8", "quantize.calib_size": 16},
              "values": {"session.graph_optimization_level": ["basic", "all"], "quantize.percentile": [99.9, 99.99]},
              "range": {"prune.ratio": [0.2, 0.4]}}
    space = space_for(recipe=recipe)
    dims = dims_of(space)
    assert "precision" not in dims and space.fixed["precision"] == "int8"
    assert dims["session.graph_optimization_level"].values == ("basic", "all")
    assert dims["quantize.percentile"].values == (99.9, 99.99)  # widened: not declared tunable
    assert (dims["prune.ratio"].low, dims["prune.ratio"].high) == (0.2, 0.4)
    steps = dict(space.pipeline({"quantize.percentile": 99.9}))
    assert steps["quantize"]["calib_size"] == 16 and steps["quantize"]["percentile"] == 99.9


@pytest.mark.parametrize("recipe", [
    {"values": {"prune.ratioo": [0.1]}},  # a typo in a pass option
    {"values": {"quantise.mode": ["static"]}},  # a typo in the pass name
    {"range": {"session.intra_threads": [1, 2]}},  # not a session setting
    {"fix": {"prune.bogus": 1}},
    {"fix": {"precison": "int8"}},
    {"dims": {"precision": ["int8"]}},  # unknown table
    {"values": {"precision": []}},
    {"range": {"prune.ratio": [0.5, 0.1]}},
])
def test_recipe_errors_are_config_errors(recipe):
    with pytest.raises(ConfigError):
        space_for(recipe=recipe)


def test_tune_reads_a_toml_recipe_and_reports_its_unknown_dimension(tmp_path):
    import onnxopt
    from tests.conftest import DIGITS

    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[tune.values]\n"prune.no_such_option" = [1, 2]\n')
    with pytest.raises(ConfigError, match="no_such_option"):
        onnxopt.tune(str(DIGITS), profile="cpu-1t", recipe=recipe, budget=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]


# ---------------------------------------------------------------- the grid


@pytest.mark.parametrize("step", [0.1, 0.05, 0.25])
def test_a_range_is_discretized_with_the_stated_step(step):
    space = space_for(recipe={"range": {"prune.ratio": [0.1, 0.6]}, "step": step})
    dim = dims_of(space)["prune.ratio"]
    grid = dim.grid()
    assert dim.step == step
    assert grid[0] == 0.1 and grid[-1] <= 0.6 + 1e-9 and 0.6 - grid[-1] < step
    assert np.allclose(np.diff(grid), step)
    assert dim.describe()["grid_step"] == step  # the report states it


def test_grid_lists_each_canonical_point_once():
    recipe = {"fix": {"simplify.enabled": True, "simplify.ort": True, "prune.criterion": "l1",
                      "prune.strategy": "uniform", "prune.round_to": 1, "session.enable_mem_pattern": True,
                      "session.enable_cpu_mem_arena": True},
              "values": {"precision": ["fp32", "int8"], "quantize.mode": ["static", "dynamic"],
                         "session.graph_optimization_level": ["all", "basic"]},
              "range": {"prune.ratio": [0.1, 0.3]}, "step": 0.1}
    space = space_for(recipe=recipe)
    grid = space.grid()
    keys = [space.key(p) for p in grid]
    assert len(set(keys)) == len(keys)
    assert all(space.canonical(p) == p for p in grid)
    quantize_dims = [d for d in space.dims if d.name.startswith("quantize.") and d.name != "quantize.mode"]
    int8_variants = 2 * int(np.prod([len(d.grid()) for d in quantize_dims]))
    prune_variants = 1 + 3  # off, or on at 0.1 / 0.2 / 0.3
    assert len(grid) == prune_variants * (1 + int8_variants) * 2
    assert space.grid_size() >= len(grid)
