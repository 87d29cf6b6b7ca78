"""One trial's build and scoring, run in a worker process (or any executor's worker).

build the pipeline -> cheap checks (the checker, inside ``run_pass``; finite outputs on a few samples)
-> accuracy on the evaluation data against the input model's outputs (cosine, top-1 agreement, mask
IoU, the user's metric drop) -> back to the tuner, which measures latency on the target. A pass that
raises is a failed trial with its one-line reason; a crash or hang of the whole worker is caught by
the tuner (the worker process dies, the trial is recorded as failed).

Example::

    job = {"steps": [("simplify", {})], "seed": 0}
    result = run_trial(payload, job)   # {"status": "ok", "model": b"...", "scores": {...}, ...}
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

CHEAP_SAMPLES = 4
_STATE: dict[str, Any] = {}  # per worker process: the payload and the judges built from it


@dataclass
class Payload:
    """What every trial of one tuning run shares; sent once to each worker process."""

    model: bytes
    calib: Any  # onnxopt.data.Dataset or None
    evaluation: Any  # onnxopt.data.Dataset
    profile: Any  # a Profile
    shapes: dict | None
    target: str
    metric: str | None
    fault: dict | None = None  # test-only: {"<spec substring>": "abort" | "hang"}


def init_worker(payload: Payload) -> None:
    """ProcessPoolExecutor initializer: keep the payload in this process; Ctrl-C is the tuner's to
    handle (it ends the workers), so a worker does not die of it mid-trial with a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STATE.clear()
    _STATE["payload"] = payload


def run_in_worker(job: dict[str, Any]) -> dict[str, Any]:
    return run_trial(_STATE["payload"], job)


def run_trial(payload: Payload, job: dict[str, Any]) -> dict[str, Any]:
    """Build and score one candidate; never raises for a failure of the candidate itself."""
    import onnx

    from onnxopt.errors import OnnxOptError
    from onnxopt.passes import PassContext, build
    from onnxopt.profiling.service import ProfileMeasurer
    from onnxopt.tuning.meter import LockedMeasurer

    start = time.perf_counter()
    _fault(payload.fault, job.get("spec", ""))
    model = onnx.load_from_string(payload.model)
    # passes that time on the target (latency-aware quantization) measure in the profiler's child,
    # holding the device lock like the tuner's own measurements
    measurer = LockedMeasurer(ProfileMeasurer(payload.profile), payload.profile.name)
    ctx = PassContext(data=payload.calib, profile=payload.profile, seed=job.get("seed", 0), shapes=payload.shapes,
                      measurer=measurer)
    try:
        candidate, records = build(job["steps"]).run(model, ctx) if job["steps"] else (model, [])
    except OnnxOptError as exc:
        return _failed("build", exc.one_line(), start)
    notes = [f"{r.name}: {note}" for r in records for note in r.notes]
    judge = _judge(payload)
    try:
        _cheap_check(judge, candidate)
        scores = judge.score(candidate)
    except OnnxOptError as exc:
        return _failed("check", exc.one_line(), start, notes)
    except (RuntimeError, ValueError) as exc:  # onnxruntime refusing to load or run the candidate
        return _failed("check", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", start, notes)
    data = candidate.SerializeToString()
    after = records[-1].after if records else None
    return {"status": "ok" if judge.holds(scores) else "violates", "model": data, "size": len(data),
            "scores": scores, "margin": judge.margin(scores), "params": after.params if after else None,
            "macs": after.macs if after else None, "notes": notes[:12], "build_s": time.perf_counter() - start}


def _judge(payload: Payload):
    """The input model's reference outputs, computed once per worker process."""
    cached = _STATE.get("judge")
    if cached is not None and cached[0] is payload:
        return cached[1]
    import onnx

    from onnxopt.targets import Judge, load_metric, parse_target

    metric = load_metric(payload.metric) if payload.metric else None
    judge = Judge(onnx.load_from_string(payload.model), payload.evaluation, parse_target(payload.target), metric)
    _STATE["judge"] = (payload, judge)
    return judge


def _cheap_check(judge, candidate) -> None:
    """Runs on a few samples with finite outputs, before the full evaluation."""
    from onnxopt.errors import MeasurementError
    from onnxopt.runtime import run

    few = judge.data.take(min(CHEAP_SAMPLES, len(judge.data)))
    for name, value in run(candidate, few).items():
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise MeasurementError(f"output {name!r} has non-finite values on {len(few)} sample(s)")


def _failed(stage: str, reason: str, start: float, notes: list[str] | None = None) -> dict[str, Any]:
    return {"status": "failed", "stage": stage, "reason": reason, "notes": (notes or [])[:12],
            "build_s": time.perf_counter() - start}


def _fault(fault: dict | None, spec: str) -> None:
    """Test-only: make this worker die or hang the way a broken onnxruntime would."""
    for needle, kind in (fault or {}).items():
        if needle in spec:
            if kind == "abort":
                os.abort()
            if kind == "hang":
                time.sleep(3600)
