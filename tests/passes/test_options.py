"""Option names: one word per concept, old names accepted with a deprecation note, and every pass
described by the registry (what ``onnxopt passes`` and the tuner read)."""

from __future__ import annotations

import warnings

import pytest

from onnxopt.errors import ConfigError
from onnxopt.passes import PassContext, build, load_recipe, registered
from onnxopt.passes.prune import PruneConfig
from onnxopt.passes.quant import Fp16Config
from tests.conftest import DIGITS_EVAL, load_corpus


def test_old_option_name_in_a_spec_builds_the_new_one_with_a_warning():
    with pytest.warns(FutureWarning, match="'calib_samples' is deprecated: write 'calib_size'"):
        pipeline = build("prune:ratio=0.2,calib_samples=7")
    assert pipeline.passes[0].config.calib_size == 7
    assert "calib_samples" not in pipeline.passes[0].options()


def test_old_option_name_in_a_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[pass]]\nname = "fp16"\nmin_cosine = 0.999\n')
    with pytest.warns(FutureWarning, match="'min_cosine' is deprecated"):
        pipeline = build(load_recipe(recipe))
    assert pipeline.passes[0].config.target == "cosine>=0.999"


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(ConfigError, match="'calib_samples' is the old name of 'calib_size'"):
        build("prune:calib_samples=7,calib_size=8")
    with pytest.raises(ValueError, match="old name"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        Fp16Config(min_cosine=0.9, target="cosine>=0.99")


def test_new_names_raise_no_warning_and_mean_the_same():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = Fp16Config(target="cosine>=0.98")
        assert PruneConfig(calib_size=5).calib_size == 5
    with pytest.warns(FutureWarning):
        old = Fp16Config(min_cosine=0.98)
    assert old == new


def test_calib_size_limits_the_samples_prune_fits_on():
    from onnxopt.data import load_data

    model = load_corpus("digits")
    data = load_data(DIGITS_EVAL, model, limit=40)
    ctx = PassContext(data=data)
    pipeline = build("prune:ratio=0.3,round_to=1,recover=lstsq,calib_size=12")
    _, records = pipeline.run(model, ctx)
    assert records[0].details["recovery"]["samples"] == 12


def test_every_pass_describes_its_options_tunables_and_old_names():
    for name, cls in registered().items():
        info = cls.describe()
        assert info.name == name and info.summary
        options = {o.name: o for o in info.options}
        assert set(options) == set(cls.Config.model_fields)
        assert {k for k, o in options.items() if o.tunable} == set(cls.tunable)
        assert set(info.deprecated.values()) <= set(options)
        assert not set(info.deprecated) & set(options)
    prune = registered()["prune"].describe()
    assert prune.deprecated == {"calib_samples": "calib_size"}
    strategy = next(o for o in prune.options if o.name == "strategy")
    assert strategy.type == "uniform|global|sensitivity" and strategy.tunable == "one of uniform, global, sensitivity"
    assert registered()["fp16"].describe().deprecated == {"min_cosine": "target"}
