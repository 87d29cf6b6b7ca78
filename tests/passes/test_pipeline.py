"""The pass contract: registry, spec strings and recipes, config errors, records, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxopt.errors import ConfigError, PassError
from onnxopt.passes import Choice, Pass, PassConfig, PassContext, Range, build, load_recipe, parse_spec, registered
from onnxopt.passes.base import register
from tests.helpers import tiny_classifier


def test_spec_parsing_groups_options_by_pass():
    assert parse_spec("simplify,prune:ratio=0.3,round_to=8,quantize:mode=static") == [
        ("simplify", {}), ("prune", {"ratio": "0.3", "round_to": "8"}), ("quantize", {"mode": "static"})]
    expected = [("simplify", {"ort": "false", "fold_affine": "true"})]
    assert parse_spec(" simplify:ort=false , fold_affine=true") == expected


@pytest.mark.parametrize("spec", ["", ",", "ratio=0.3", "simplify,=3", "simplify:=x"])
def test_bad_specs_are_config_errors(spec):
    with pytest.raises(ConfigError):
        parse_spec(spec)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("abc:=,. |01"), max_size=30))
def test_spec_parser_never_crashes(text):
    try:
        steps = parse_spec(text)
    except ConfigError:
        return
    assert all(name and isinstance(options, dict) for name, options in steps)


def test_recipe_and_spec_build_the_same_pipeline(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "simplify"\nort = false\n\n[[pass]]\nname = "simplify"\n')
    from_recipe = build(load_recipe(recipe))
    from_spec = build("simplify:ort=false,simplify")
    assert repr(from_recipe) == repr(from_spec)
    assert [p.config for p in from_recipe.passes] == [p.config for p in from_spec.passes]
    listed = tmp_path / "l.toml"
    listed.write_text('passes = ["simplify:ort=false", "simplify"]\n')
    assert repr(build(load_recipe(listed))) == repr(from_spec)


@pytest.mark.parametrize("text, fragment", [
    ("[[pass]]\nort = true\n", "no name"), ("bogus = 1\n", "unknown key"), ("[[pass\n", "not valid TOML"),
    ("passes = []\n", "lists no passes")])
def test_bad_recipes(tmp_path, text, fragment):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_recipe(recipe)


def test_unknown_pass_and_option_list_valid_ones():
    with pytest.raises(ConfigError) as exc:
        build("simplfy")
    assert "simplify" in exc.value.hint
    with pytest.raises(ConfigError) as exc:
        build("simplify:ortt=true")
    assert "ortt" in exc.value.message and "fold_affine" in exc.value.hint
    with pytest.raises(ConfigError, match="fold_affine"):
        build("simplify:fold_affine=maybe")


def test_registry_refuses_duplicates_and_bad_tunables():
    class Dup(Pass):
        name = "simplify"

    with pytest.raises(ValueError, match="already registered"):
        register(Dup)

    class Cfg(PassConfig):
        level: int = 1

    class BadTunable(Pass):
        name = "bad-tunable-test"
        Config = Cfg
        tunable = {"levle": Range(0, 3)}

    with pytest.raises(ValueError, match="levle"):
        register(BadTunable)


def test_every_registered_pass_declares_valid_tunables():
    for name, cls in registered().items():
        assert cls.name == name
        for option, space in cls.tunable.items():
            assert option in cls.Config.model_fields
            assert isinstance(space, Choice | Range)
            if isinstance(space, Range):
                assert space.low < space.high


def test_records_and_byte_identical_output():
    pipeline = build("simplify")
    first, records = pipeline.run(tiny_classifier(), PassContext())
    second, _ = build("simplify").run(tiny_classifier(), PassContext())
    assert first.SerializeToString() == second.SerializeToString()
    (record,) = records
    assert record.name == "simplify" and record.seconds >= 0
    assert record.before.nodes > record.after.nodes
    assert record.before.macs == record.after.macs > 0
    assert record.before.params > record.after.params


def test_a_failing_pass_is_named_with_those_before_it():
    class Broken(Pass):
        name = "broken-test-pass"

        def apply(self, model, ctx):
            raise RuntimeError("kaboom")

    pipeline = build([build("simplify").passes[0], Broken()])
    with pytest.raises(PassError) as exc:
        pipeline.run(tiny_classifier(), PassContext())
    assert exc.value.pass_name == "broken-test-pass"
    assert exc.value.completed == ("simplify",)
    assert "kaboom" in exc.value.message and "after simplify" in exc.value.message
