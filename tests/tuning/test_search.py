"""The search loop and the decision, with the fake meter and thread-built trials (no profiler):
seeded replay, every strategy, the grid, the accuracy target, never slower than the input, the cache."""

from __future__ import annotations

import concurrent.futures as cf
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.model import load
from onnxopt.tuning.run import AA_LABEL, MIN_NOISE
from onnxopt.tuning.search import STRATEGIES
from tests.conftest import DIGITS, DIGITS_EVAL
from tests.tuning.fakes import FAST_RECIPE, CountingExecutor, FakeMeter, fake_cost, sequence, tune_fast

SEED_NAMES = {"input", "simplify", "prune", "int8", "fp16", "prune+int8"}


def in_space(space, point) -> bool:
    dims = {d.name: d for d in space.dims}
    for name, value in point.items():
        dim = dims.get(name)
        if dim is None:
            if space.fixed.get(name) != value:
                return False
        elif not (dim.low <= value <= dim.high if dim.is_range else value in dim.values):
            return False
    return space.canonical(point) == point


# ---------------------------------------------------------------- seeded replay


@pytest.mark.parametrize("strategy", ["random", "ngopt"])
def test_same_seed_same_trial_sequence(strategy):
    first = tune_fast(strategy=strategy, seed=7)
    again = tune_fast(strategy=strategy, seed=7)
    assert len(first.trials) == 6
    assert sequence(again) == sequence(first)
    assert [t.status for t in again.trials] == [t.status for t in first.trials]
    assert [t.loss for t in again.trials] == [t.loss for t in first.trials]


def test_a_different_seed_asks_differently():
    one, other = tune_fast(strategy="random", seed=7), tune_fast(strategy="random", seed=8)
    searched = [[k for o, k in sequence(r) if o == "search"] for r in (one, other)]
    assert searched[0] and searched[1] and searched[0] != searched[1]


# ---------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs(strategy):
    meter = FakeMeter()
    result = tune_fast(strategy=strategy, budget=5, meter=meter)
    trials = result.trials
    assert len(trials) == 5
    assert len({t.key for t in trials}) == 5
    assert [t.seq for t in trials] == list(range(1, 6))
    assert all(in_space(result.space, t.point) for t in trials)
    assert all(t.status in ("ok", "violates") for t in trials), [(t.spec, t.reason) for t in trials]
    measured = [t for t in trials if t.status == "ok"]
    assert all(t.latency.ratio == pytest.approx(t.loss) for t in measured)
    assert len(meter.calls) == len(measured) + (1 if result.final else 0)
    if strategy == "grid":
        assert {t.origin for t in trials} == {"grid"}
    else:  # the seeds are told first
        seeds = [t.origin for t in trials if t.origin != "search"]
        assert set(seeds) <= SEED_NAMES and seeds == [t.origin for t in trials[:len(seeds)]]
        assert {"input", "simplify", "prune"} <= set(seeds)


def test_budget_beyond_a_tiny_space_visits_each_point_once():
    recipe = {"fix": {**FAST_RECIPE["fix"], "simplify.enabled": True, "prune.enabled": False,
                      "session.enable_mem_pattern": True}}
    result = tune_fast(strategy="random", budget=8, recipe=recipe)
    assert len(result.space.grid()) == 3  # graph_optimization_level is all that is left
    assert sorted(t.key for t in result.trials) == sorted(result.space.key(p) for p in result.space.grid())


# ---------------------------------------------------------------- grid

GRID_RECIPE = {
    "fix": {**FAST_RECIPE["fix"], "simplify.enabled": True, "session.enable_mem_pattern": True},
    "values": {"prune.enabled": [False, True], "session.graph_optimization_level": ["all", "basic"]},
    "range": {"prune.ratio": [0.1, 0.3]},
    "step": 0.1,
}


def test_grid_visits_exactly_the_enumerated_space():
    result = tune_fast(strategy="grid", budget=50, recipe=GRID_RECIPE)
    grid = result.space.grid()
    assert len(grid) == (1 + 3) * 2  # prune off or at 0.1/0.2/0.3, times two optimization levels
    assert [t.point for t in result.trials] == grid  # each once, in the grid's order
    ratios = {t.point["prune.ratio"] for t in result.trials if t.point["prune.enabled"]}
    assert ratios == {0.1, 0.2, 0.3}  # the Range discretized with the stated step


def test_grid_with_a_smaller_budget_takes_the_first_points():
    result = tune_fast(strategy="grid", budget=3, recipe=GRID_RECIPE)
    assert [t.point for t in result.trials] == result.space.grid()[:3]


# ---------------------------------------------------------------- the decision


def cosine_to_input(model: onnx.ModelProto) -> float:
    """Mean per-sample cosine of the logits against the input model's, computed here with onnxruntime."""
    with np.load(DIGITS_EVAL) as data:
        x = data["input"]
    outputs = []
    for proto in (load(DIGITS), model):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(None, {"input": x[i:i + 50]})[0] for i in range(0, len(x), 50)]))
    ref, cand = (o.reshape(len(x), -1).astype(np.float64) for o in outputs)
    return float(np.mean(np.sum(ref * cand, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))))


def test_a_candidate_breaking_the_target_is_never_returned():
    # pruning without recovery is the smallest (fastest for the fake meter) and breaks a strict cosine target
    target = 0.995
    result = tune_fast(strategy="random", budget=8, seed=1, target=f"cosine>={target}", data=str(DIGITS_EVAL),
                       meter=FakeMeter(spread=0.001))
    violating = [t for t in result.trials if t.status == "violates"]
    assert violating, "the target is meant to be strict enough that some candidates break it"
    assert all(t.margin < 0 and t.latency is None for t in violating)  # not measured, told as violations
    assert not {t.seq for t in violating} & {t.seq for t in result.front}
    assert min(fake_cost(onnx.load_from_string(t.model), t.session) for t in violating) < \
        fake_cost(result.model, result.best.session if result.best else {})  # a violator would have won on speed
    if result.best is not None:
        assert result.best.status == "ok" and result.best.scores["cosine"] >= target
    assert cosine_to_input(result.model) >= target


def test_nothing_meets_the_target_returns_the_input():
    result = tune_fast(strategy="random", budget=4, target="top1>=1.01", meter=FakeMeter(spread=0.001))
    assert {t.status for t in result.trials} == {"violates"}
    assert result.best is None and not result.improved and result.front == []
    assert result.model.SerializeToString() == load(DIGITS).SerializeToString()


def test_never_slower_every_candidate_slower_returns_the_input():
    meter = FakeMeter(ratio_of=lambda label, model, session: 1.25)
    result = tune_fast(strategy="random", budget=6, meter=meter)
    assert [t for t in result.trials if t.status == "ok"]
    assert result.best is None and not result.improved
    assert result.model.SerializeToString() == load(DIGITS).SerializeToString()
    assert "input model is returned" in result.summary["decision"]
    finalists = [f for f in result.final if f.label not in ("input", AA_LABEL)]
    assert finalists and all(f.ratio > 1 for f in finalists)  # the finalists were re-measured


@pytest.mark.parametrize("spread", [0.2, 0.01])
def test_a_speed_up_counts_only_beyond_its_interval(spread):
    # every candidate reads 0.9x; with a +-20% interval that is noise, with +-1% it is a speed-up (the
    # final run's A/A pair of the input reads 1 +- spread: the noise floor the winner must clear)
    result = tune_fast(strategy="random", budget=5, meter=FakeMeter(spread=spread, ratio_of=lambda *_: 0.9))
    noise = max(MIN_NOISE, spread)
    beyond_noise = 0.9 * (1 + spread) < 1.0 - noise
    assert result.summary["noise"] == pytest.approx(noise)
    assert result.improved == beyond_noise
    if beyond_noise:
        assert result.best.status == "ok" and not result.space.is_input(result.best.point)
        chosen = next(f for f in result.final if f.label == f"t{result.best.seq}")
        assert chosen.ci_high < 1.0
    else:
        assert result.model.SerializeToString() == load(DIGITS).SerializeToString()


# ---------------------------------------------------------------- parallel trials, the cache


def test_parallel_builds_measure_one_at_a_time():
    meter = FakeMeter(hold_s=0.02)
    result = tune_fast(strategy="random", budget=6, jobs=2, meter=meter)
    assert len(result.trials) == 6
    assert meter.overlaps == 0


def test_a_rerun_reuses_every_trial_from_the_cache(tmp_path):
    first = tune_fast(strategy="ngopt", seed=3, out_dir=tmp_path)
    counting, meter = CountingExecutor(), FakeMeter()
    again = tune_fast(strategy="ngopt", seed=3, out_dir=tmp_path, executor=counting, meter=meter)
    assert sequence(again) == sequence(first)
    assert all(t.cached for t in again.trials) and again.summary["cached"] == len(first.trials)
    # nothing rebuilt but the finalists (the cache keeps no models), nothing re-measured but the final run
    finalists = len([f for f in again.final if f.label not in ("input", AA_LABEL)])
    assert counting.submitted == finalists
    assert len(meter.calls) == (1 if finalists else 0)
    assert again.best is None or again.best.model is not None


def test_a_larger_budget_continues_from_the_cached_trials(tmp_path):
    first = tune_fast(strategy="random", seed=5, budget=4, out_dir=tmp_path)
    counting = CountingExecutor()
    more = tune_fast(strategy="random", seed=5, budget=7, out_dir=tmp_path, executor=counting)
    assert sequence(more)[:4] == sequence(first)
    assert [t.cached for t in more.trials] == [True] * 4 + [False] * 3
    assert more.summary["cached"] == 4


class KilledWorker(Exception):
    """What a cluster executor's future raises when the worker running it died (as dask.distributed's does)."""


class LosingExecutor(cf.ThreadPoolExecutor):
    """A thread pool standing in for a cluster whose worker dies under every pruning trial."""

    def submit(self, fn, /, *args, **kwargs):
        if "prune:" in args[-1].get("spec", ""):
            future: cf.Future = cf.Future()
            future.set_exception(KilledWorker("worker tcp://10.0.0.7:4242 died running the task"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_a_worker_lost_by_any_executor_fails_its_trial_and_the_search_goes_on():
    result = tune_fast(strategy="random", budget=6, executor=LosingExecutor(1))
    assert len(result.trials) == 6
    lost = [t for t in result.trials if "prune:" in t.spec]
    assert lost and all(t.status == "failed" and t.stage == "crash" and "KilledWorker" in t.reason for t in lost)
    assert all(t.status != "failed" for t in result.trials if t not in lost)


def test_a_time_limit_stops_the_search_before_the_budget():
    start = time.monotonic()
    result = tune_fast(strategy="random", budget=500, time_limit="2s")
    assert 0 < len(result.trials) < 500
    assert time.monotonic() - start < 30
