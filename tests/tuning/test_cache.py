"""The SQLite trial cache: one row per finished trial, what it keeps, and what makes two trials the same."""

from __future__ import annotations

import sqlite3

import pytest

from onnxopt.errors import ConfigError
from onnxopt.tuning.cache import TrialCache, digest
from onnxopt.tuning.meter import Latency
from onnxopt.tuning.search import Trial
from tests.tuning.fakes import tune_fast


def a_trial(seq: int = 3) -> Trial:
    return Trial(seq, '{"precision": "int8"}', {"precision": "int8"}, "quantize:mode=static",
                 {"enable_mem_pattern": False}, "ok", origin="search",
                 scores={"cosine": 0.9991, "top1": 1.0, "max_drop": None}, margin=0.0091,
                 size=40_000, params=27_000, macs=690_000, latency=Latency("t3", True, 0.02, 0.81, 0.8, 0.82, 5.0),
                 loss=0.81, model=b"model bytes", notes=["quantize: static int8"])


def test_a_stored_trial_comes_back_whole_but_without_its_model(tmp_path):
    path = tmp_path / "trials.sqlite"
    cache = TrialCache(path)
    trial = a_trial()
    cache.put("k1", "run-a", trial.seq, trial.point, trial.stored())
    cache.close()

    reopened = TrialCache(path)  # another process, later
    back = Trial.from_stored(reopened.get("k1"))
    assert back.cached and back.model is None
    for name in ("seq", "key", "point", "spec", "session", "status", "origin", "scores", "margin", "size", "params",
                 "macs", "latency", "loss", "notes"):
        assert getattr(back, name) == getattr(trial, name), name
    assert reopened.get("k2") is None
    assert [t["seq"] for t in reopened.trials("run-a")] == [trial.seq] and reopened.trials("run-b") == []
    assert reopened.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reopened.close()


def test_without_a_path_the_cache_lives_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = TrialCache(None)
    cache.put("k", "run", 1, {}, a_trial().stored())
    assert cache.count() == 1 and cache.path == ":memory:"
    cache.close()
    assert list(tmp_path.iterdir()) == []


def test_each_put_is_its_own_transaction(tmp_path):
    # a reader (the next run after a kill -9) sees every trial the moment put() returns
    path = tmp_path / "trials.sqlite"
    cache = TrialCache(path)
    for seq in (1, 2):
        cache.put(f"k{seq}", "run", seq, {}, a_trial(seq).stored())
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as reader:
            assert reader.execute("SELECT COUNT(*) FROM trials").fetchone() == (seq,)
    cache.close()


def test_digest_is_stable_and_separates_its_parts():
    assert digest(b"model", {"b": 1, "a": 2}) == digest(b"model", {"a": 2, "b": 1})
    assert digest("ab", "c") != digest("a", "bc")
    assert digest(b"model", "cosine>=0.99") != digest(b"model", "cosine>=0.999")


def test_trials_are_reused_only_under_the_same_target(tmp_path):
    first = tune_fast(strategy="random", seed=1, budget=4, out_dir=tmp_path)
    same = tune_fast(strategy="random", seed=1, budget=4, out_dir=tmp_path)
    other = tune_fast(strategy="random", seed=1, budget=4, out_dir=tmp_path, target="cosine>=0.5")
    assert first.summary["cached"] == 0 and same.summary["cached"] == 4
    assert other.summary["cached"] == 0  # another target judges the same candidates differently


def test_resume_needs_a_run_to_resume(tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        tune_fast(out_dir=tmp_path, resume=True)
