"""Crash isolation and resume, for real: trial workers that die or hang in the spawned process pool, and
``kill -9`` of a running ``onnxopt tune`` (its process group: the CLI, its pool and the profiler's
child) followed by the same command, which reuses every stored trial and finishes the budget."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import onnx

import onnxopt
from onnxopt.tuning.run import DB_NAME
from tests.conftest import DIGITS, DIGITS_EVAL, ROOT
from tests.tuning.fakes import FAST_RECIPE, FakeMeter

# a fresh pool's worker starts (imports onnxruntime) and builds within this on 2 loaded cores
TRIAL_TIMEOUT_S = 10.0


def test_a_crashing_or_hanging_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fault = {"prune:": "abort", "(input)": "hang"}  # every pruning trial kills its worker; the input seed hangs
    start = time.monotonic()
    result = onnxopt.tune(str(DIGITS), profile="cpu-1t", calib=str(DIGITS_EVAL), budget=4, jobs=2,
                          strategy="random", recipe=FAST_RECIPE, meter=FakeMeter(), fault=fault,
                          trial_timeout_s=TRIAL_TIMEOUT_S)  # no executor: the default spawned process pool
    elapsed = time.monotonic() - start
    trials = result.trials
    assert len(trials) == 4  # the budget is finished
    for trial in trials:
        if "prune:" in trial.spec:
            assert (trial.status, trial.stage) == ("failed", "crash") and "died" in trial.reason
        elif trial.spec == "(input)":
            assert (trial.status, trial.stage) == ("failed", "hang")
            assert f"{TRIAL_TIMEOUT_S:g} s" in trial.reason
        else:  # built by a fresh worker after the crash (jobs=2: the crash broke the pool under it too)
            assert trial.status in ("ok", "violates"), (trial.spec, trial.reason)
    assert {t.stage for t in trials if t.status == "failed"} == {"crash", "hang"}
    assert [t for t in trials if t.status == "ok"]
    assert result.summary["failed"] == sum(t.status == "failed" for t in trials)
    assert elapsed < 6 * TRIAL_TIMEOUT_S  # one hang costs its timeout, not the run
    for _ in range(100):  # the hung worker was killed and no pool is left (a killed process takes a moment to go)
        if not multiprocessing.active_children():
            break
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    assert list(tmp_path.iterdir()) == []


def stored_trials(db) -> list[tuple[str, str]]:
    """(key, point) of the trials in the SQLite file, read-only (another process may be writing it)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT key, point FROM trials ORDER BY created").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_9_then_the_same_command_reuses_the_stored_trials_and_finishes(tmp_path):
    out, budget = tmp_path / "out", 6
    command = [sys.executable, "-m", "onnxopt.cli", "tune", str(DIGITS), "-o", str(out), "--profile", "cpu-1t",
               "--calib", str(DIGITS_EVAL), "--budget", str(budget), "--seed", "0", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(stored_trials(out / DB_NAME)) < 3:
            assert proc.poll() is None, f"tune ended before 3 trials were stored: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no 3 trials stored in time"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its trial workers and any measurement child
        proc.wait()
        proc.stderr.close()
    for _ in range(50):
        if not group_alive(proc.pid):
            break
        time.sleep(0.1)
    assert not group_alive(proc.pid)

    stored = stored_trials(out / DB_NAME)
    assert 3 <= len(stored) < budget
    leftovers = {p.name for p in out.iterdir()} - {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}
    assert leftovers == set()  # killed mid-search: no outputs yet, and no half-written ones
    with sqlite3.connect(out / DB_NAME) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    summary, rows = report["summary"], report["trials"]
    assert summary["trials"] == len(rows) == budget
    assert summary["cached"] == len(stored)
    cached_points = [r["point"] for r in rows if r["cached"]]
    assert sorted(json.dumps(p, sort_keys=True) for p in cached_points) == \
        sorted(json.dumps(json.loads(p), sort_keys=True) for _, p in stored)
    assert [r["cached"] for r in rows] == [True] * len(stored) + [False] * (budget - len(stored))  # replayed first
    assert len(stored_trials(out / DB_NAME)) == budget

    names = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {"best.onnx", "best.ort_settings.json", "trials.csv", "report.json", "report.html"} <= names
    assert not [n for n in names if n.endswith(".tmp") or n.rsplit("/", 1)[-1].startswith(".")]
    onnx.checker.check_model(onnx.load(out / "best.onnx"))
    assert json.loads((out / "report.json").read_text()) == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _default_sigint() -> None:
    """A child of a non-interactive shell may inherit SIGINT ignored; a user's terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()


def test_ctrl_c_exits_130_keeps_the_finished_trials_and_ends_every_worker(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "onnxopt.cli", "tune", str(DIGITS), "-o", str(out), "--profile", "cpu-1t",
               "--calib", str(DIGITS_EVAL), "--budget", "8", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 240
        while len(stored_trials(out / DB_NAME)) < 2:
            assert proc.poll() is None, f"tune ended before 2 trials were stored: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no 2 trials stored in time"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        code = proc.wait(timeout=60)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    assert code == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr  # neither the CLI nor a trial worker prints one
    for _ in range(100):  # the pool's workers and any measurement child end with the tuner
        alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        zombies = [p for p in alive if Path(f"/proc/{p}/stat").is_file()
                   and Path(f"/proc/{p}/stat").read_text().split()[2] == "Z"]
        if len(alive) == len(zombies):
            break
        time.sleep(0.1)
    assert len(alive) == len(zombies), alive
    assert len(stored_trials(out / DB_NAME)) >= 2
    assert {p.name for p in out.iterdir()} <= {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"}
