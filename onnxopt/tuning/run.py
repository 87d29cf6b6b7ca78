"""``tune()``: search pass settings and session settings by latency measured on the target and by
accuracy, and return the fastest model that meets the target with the Pareto front.

The decision is made outside the noise: every trial is measured interleaved with the input model,
and at the end the front's fastest candidates are re-measured together against the input in one
interleaved run with an A/A pair of the input (the noise floor); a candidate is chosen only when
its latency ratio's interval lies below 1 minus that noise. If none does, the input model is
returned and the result says so.

Example (right after ``torch.onnx.export``)::

    result = onnxopt.tune(model_proto, profile="cpu-1t", calib="calib.npz", target="cosine>=0.999", budget=20)
    result.model, result.best.spec, [t.spec for t in result.front]
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxopt import model as model_io
from onnxopt.errors import ConfigError
from onnxopt.tuning.cache import TrialCache, digest
from onnxopt.tuning.meter import Latency, Meter, ProfilerMeter, feeds_for
from onnxopt.tuning.objective import Objective, accuracy_loss
from onnxopt.tuning.pareto import front_indices
from onnxopt.tuning.search import Event, Trial, Tuner
from onnxopt.tuning.space import Space, apply_recipe, build_space
from onnxopt.tuning.trial import Payload

DEFAULT_TARGET = "cosine>=0.99"
DEFAULT_BUDGET = 20
DEFAULTS = {"profile": "cpu", "target": DEFAULT_TARGET, "strategy": "ngopt", "seed": 0}
FINALISTS = 5  # front members re-measured together at the end (fastest first)
AA_LABEL = "input (A/A)"
# the smallest gain taken as real even when the A/A pair agrees closely: in-run intervals do not
# cover what changes between processes (memory placement, clock state)
MIN_NOISE = 0.01
EVAL_SAMPLES = 256  # held-out samples taken from the end of the calibration data when no --data is given
# (a drop target of 1 point then spans 2.5 samples: fewer lets noise pass a candidate)
DB_NAME = "trials.sqlite"
MIN_SLACK_SAMPLES = 2  # a drop target must allow at least this many samples to flip


@dataclass
class TuneResult:
    """The chosen model (the input when nothing is faster beyond the noise), the front and every trial."""

    model: onnx.ModelProto
    best: Trial | None
    front: list[Trial]
    trials: list[Trial]
    final: list[Latency]
    space: Space
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        return self.best is not None


def parse_duration(text: str | float | None) -> float | None:
    """``"30m"``, ``"90s"``, ``"1h"`` or seconds -> seconds."""
    if text is None or isinstance(text, int | float):
        return text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", text)
    if not match:
        raise ConfigError(f"bad duration {text!r}", "write e.g. 90s, 30m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def tune(
    model: model_io.ModelSource,
    *,
    profile: Any = None,
    calib: Any = None,
    data: Any = None,
    metric: str | None = None,
    target: str | None = None,
    budget: int | None = None,
    time_limit: str | float | None = None,
    strategy: str | None = None,
    seed: int | None = None,
    jobs: int = 1,
    resume: bool = False,
    objective: str | None = None,
    recipe: str | os.PathLike | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    executor: cf.Executor | None = None,
    meter: Meter | None = None,
    on_event: Event | None = None,
    trial_timeout_s: float = 900.0,
    fault: dict | None = None,
) -> TuneResult:
    """Search, decide and (with ``out_dir``) write ``best.onnx``, ``pareto/``, ``trials.csv`` and the report.

    Without ``out_dir`` everything stays in memory (the trial cache too). Finished trials in
    ``out_dir`` are always reused; ``resume`` also takes the last run's profile, target, strategy,
    seed and budget there for those not given. ``meter`` replaces the profiler (tests use a fake);
    ``executor`` builds trials (default: a spawned process pool of ``jobs`` workers, so a crashing
    candidate cannot take the tuner down). ``fault`` is test-only."""
    from onnxopt.data import load_data
    from onnxopt.profiling.profiles import get_profile
    from onnxopt.targets import parse_target

    goal = Objective.parse(objective)
    given = {"profile": profile, "target": target, "strategy": strategy, "seed": seed, "budget": budget}
    stored = _last_run(out_dir) if resume else {}
    if resume and not stored:
        raise ConfigError(f"nothing to resume in {out_dir}: it holds no tune run", "run without --resume first")
    chosen = {k: v if v is not None else stored.get(k, DEFAULTS.get(k)) for k, v in given.items()}
    profile, target, strategy, seed, budget = (chosen[k] for k in ("profile", "target", "strategy", "seed", "budget"))
    criteria = parse_target(target)  # a bad target fails now, not in every trial
    prof = get_profile(profile)
    profile_name = profile if isinstance(profile, str) else prof.name  # what --resume gives get_profile again
    space = build_space(prof, _recipe(recipe))
    grid_points = len(space.grid()) if strategy == "grid" else None
    if budget is None:  # a grid visits all its points unless told otherwise
        budget = grid_points or DEFAULT_BUDGET
    if budget < 1:
        raise ConfigError("the budget must be at least 1 trial")
    source = model
    model = model_io.load(model, shapes=shapes)
    calib_set, eval_set = _datasets(load_data, model, calib, data, shapes)
    _check_target(model, eval_set, criteria, target, metric)
    _warn_resolution(eval_set, criteria)
    if calib_set is not None and any(d.name == "quantize.mode" for d in space.dims) and "quantize.target" not in (
            {d.name for d in space.dims} | set(space.fixed)):
        # int8 with the quantizer's own fallback to the tune target: the fewest float nodes that keep it
        space = apply_recipe(space, {"values": {"quantize.target": [None, target]},
                                     "fix": {"quantize.eval": metric} if metric else {}})
    if calib_set is None and any(d.name == "prune.strategy" for d in space.dims):
        # sensitivity pruning measures on calibration data: without it, uniform and global only
        space = apply_recipe(space, {"values": {"prune.strategy": ["uniform", "global"]}})
    if calib_set is None and any(d.name == "quantize.mode" for d in space.dims):
        # static int8 and its latency-aware fallback calibrate: without data only dynamic int8 is searched
        space = apply_recipe(space, {"fix": {"quantize.mode": "dynamic", "quantize.latency_aware": False}})
    payload = Payload(model.SerializeToString(), calib_set, eval_set, prof, dict(shapes) if shapes else None,
                      target, metric, fault)
    meter = meter or ProfilerMeter(prof, feeds_for(model, eval_set, prof.inputs.samples))
    cache = TrialCache(_db_path(out_dir) if out_dir is not None else None)
    context = _context_key(payload, prof, eval_set, seed)
    cache.start_run(context, {"profile": profile_name, "target": target, "strategy": strategy, "seed": seed,
                              "budget": budget})
    tuner = Tuner(model, space, payload, meter, strategy=strategy, budget=budget, time_s=parse_duration(time_limit),
                  seed=seed, jobs=jobs, cache=cache, context_key=context, seeds=seed_points(space),
                  executor=executor, trial_timeout_s=trial_timeout_s, on_event=on_event, objective=goal)
    if on_event:
        on_event("start", {"budget": budget, "space": space})
    trials = tuner.run()
    result = decide(model, trials, tuner, meter, space, goal, on_event)
    if grid_points is not None:
        result.summary["grid"] = (f"{grid_points} distinct points" + (f", the first {budget} visited (--budget)"
                                                                       if budget < grid_points else ", all visited"))
    result.summary.update(profile=prof.name, target=target, strategy=strategy, seed=seed, budget=budget,
                          objective=goal.describe(),
                          input=str(source) if isinstance(source, str | os.PathLike) else "(in memory)",
                          data=eval_set.source, synthetic=eval_set.synthetic)
    if out_dir is not None:
        from onnxopt.tuning.report import write_outputs

        write_outputs(result, prof, Path(out_dir), protect=(source,) if isinstance(source, str | os.PathLike) else ())
        cache.start_run(context, {**result.summary, "final": [f.row() for f in result.final], "profile": profile_name})
    cache.close()
    return result


def _datasets(load_data, model, calib, data, shapes):
    """Calibration and evaluation data; without ``data`` the last samples of ``calib`` are held out."""
    calib_set = load_data(calib, model, shapes=shapes) if calib is not None else None
    if data is not None:
        return calib_set, load_data(data, model, shapes=shapes)
    if calib_set is not None and len(calib_set) >= 8:
        held = min(EVAL_SAMPLES, len(calib_set) // 2)
        return calib_set.take(len(calib_set) - held), calib_set.tail(held)
    return calib_set, load_data("synthetic:n=16", model, shapes=shapes)


def _check_target(model: onnx.ModelProto, eval_set, criteria, target: str, metric: str | None) -> None:
    """Refuse a target the model's outputs or the data cannot give, before any trial is built."""
    from onnxopt.agreement import is_class_like
    from onnxopt.runtime import run

    kinds = {c.kind for c in criteria}
    if "max_drop" in kinds and eval_set.labels is None and metric is None:
        raise ConfigError(f"the target {target!r} needs labelled evaluation data or --eval",
                          "give --data with labels (an .npz with a 'labels' array) or --eval module:function")
    if "top1" in kinds:
        outputs = run(model, eval_set.take(min(2, len(eval_set))))
        if not any(is_class_like(value) for value in outputs.values()):
            raise ConfigError(f"the target {target!r} needs class scores, and no output of this model is [N, C]",
                              "use cosine>= or iou>= for feature or mask outputs")


def _warn_resolution(eval_set, criteria) -> None:
    """Warn when the evaluation set cannot resolve a drop target: with N samples a top-1 drop moves in
    steps of 1/N, and a target of fewer than ``MIN_SLACK_SAMPLES`` samples lets noise pick the winner."""
    import warnings

    for criterion in criteria:
        slack = criterion.threshold * len(eval_set)
        if criterion.kind == "max_drop" and slack < MIN_SLACK_SAMPLES:
            warnings.warn(f"the target {criterion} is {slack:.1f} sample(s) of {len(eval_set)}: a candidate can "
                          f"pass it by chance; give more evaluation data (--data)", stacklevel=3)


def _recipe(recipe) -> dict[str, Any] | None:
    if recipe is None or isinstance(recipe, Mapping):
        return dict(recipe) if recipe is not None else None
    import tomllib

    try:
        with open(recipe, "rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the recipe {recipe}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the recipe {recipe} is not valid TOML: {exc}") from None
    return table.get("tune", table)


def _last_run(out_dir) -> dict[str, Any]:
    """The settings of the last run recorded in ``out_dir`` (empty when there is none)."""
    if out_dir is None or not (Path(out_dir) / DB_NAME).is_file():
        return {}
    cache = TrialCache(Path(out_dir) / DB_NAME)
    runs = cache.runs()
    cache.close()
    return {k: v for k, v in runs[-1][1].items() if k in (*DEFAULTS, "budget")} if runs else {}


def _db_path(out_dir) -> Path:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / DB_NAME


def _context_key(payload: Payload, prof, eval_set, seed: int) -> str:
    """What makes two trials of the same point comparable: input, data, target, profile, versions."""
    import onnxruntime

    from onnxopt import __version__

    calib = payload.calib.source if payload.calib is not None else None
    return digest(payload.model, calib, eval_set.source, len(eval_set), payload.target, payload.metric,
                  prof.model_dump(mode="json"), __version__, code_digest(), onnxruntime.__version__, seed)


def code_digest() -> str:
    """A hash of onnxopt's own source: a trial measured by other pass code is not reused (the version
    number alone does not change between commits)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def seed_points(space: Space) -> list[tuple[str, dict[str, Any]]]:
    """Told first: the input model, the plain default (simplify), each single technique (sensitivity
    pruning, latency-aware int8, fp16 where the profile runs it), and sensitivity pruning followed by
    latency-aware int8 (the combination neither reaches alone)."""
    dims = {d.name: d for d in space.dims}
    candidates = [("input", {"simplify.enabled": False}), ("simplify", {}),
                  ("prune", {"prune.enabled": True, "prune.strategy": "sensitivity"}),
                  ("int8", {"precision": "int8", "quantize.latency_aware": True}),
                  ("fp16", {"precision": "fp16"}),
                  ("prune+int8", {"prune.enabled": True, "prune.strategy": "sensitivity", "precision": "int8",
                                  "quantize.latency_aware": True})]
    seeds, keys = [], set()
    for name, values in candidates:
        values = {k: v for k, v in values.items() if k not in space.fixed}  # a recipe's fixed value wins
        valid = all(k in dims and (dims[k].is_range or v in dims[k].values) for k, v in values.items())
        if valid and space.key(values) not in keys:  # fixed values can make two seeds one point
            keys.add(space.key(values))
            seeds.append((name, values))
    return seeds


# ---------------------------------------------------------------- the decision


def objectives(trial: Trial) -> tuple[float, float, float, float]:
    """Minimized: latency ratio, size, accuracy loss (1 - cosine, or the metric drop), memory."""
    memory = trial.latency.memory_mb if trial.latency and trial.latency.memory_mb is not None else 0.0
    return (trial.latency.ratio, float(trial.size or 0), accuracy_loss(trial.scores), float(memory))


def decide(model: onnx.ModelProto, trials: list[Trial], tuner: Tuner, meter: Meter, space: Space,
           goal: Objective, on_event: Event | None) -> TuneResult:
    """Re-measure the front's best together with the input; choose the best one that is faster beyond
    the noise (latency objective), or not slower beyond it and better in the weighted objective."""
    ok = [t for t in trials if t.status == "ok" and t.latency and t.latency.ratio is not None]
    front = [ok[i] for i in front_indices([objectives(t) for t in ok])]
    front.sort(key=lambda t: t.loss)
    finalists = [t for t in front if not space.is_input(t.point)][:FINALISTS]
    tuner.rebuild(finalists)
    finalists = [t for t in finalists if t.model is not None]
    if on_event:
        on_event("final", {"finalists": finalists})
    # the input twice (an A/A pair): how far apart two sessions of one model land is the noise floor
    items = [("input", model, {}), (AA_LABEL, model, {})]
    items += [(f"t{t.seq}", onnx.load_from_string(t.model), t.session) for t in finalists]
    final = meter(items) if finalists else []
    by_label = {lat.label: lat for lat in final}
    noise = aa_noise(by_label.get(AA_LABEL))
    if goal.latency_only:
        winners = [t for t in finalists if _faster(by_label.get(f"t{t.seq}"), noise)]
    else:
        winners = [t for t in finalists if _not_slower(by_label.get(f"t{t.seq}"), noise)
                   and _final_score(t, by_label, goal) < goal.input_score()]
    winners.sort(key=lambda t: _final_score(t, by_label, goal))
    best = winners[0] if winners else None
    summary: dict[str, Any] = {"trials": len(trials), "ok": len(ok),
                               "violates": sum(t.status == "violates" for t in trials),
                               "failed": sum(t.status == "failed" for t in trials),
                               "cached": sum(t.cached for t in trials), "noise": round(noise, 4)}
    chosen = model
    if best is None and not finalists:
        summary["decision"] = ("no candidate met the target and was measured; the input model is returned"
                               if trials else "no trial ran; the input model is returned")
    elif best is None:
        summary["decision"] = (f"no candidate was faster than the input beyond the measurement noise "
                               f"({noise:.1%}, from an A/A pair re-measured with them); the input model is returned")
    else:
        lat = by_label[f"t{best.seq}"]
        summary["decision"] = (f"trial {best.seq} ({best.spec}) runs at {lat.ratio:.3f}x the input's latency "
                               f"[{lat.ci_low:.3f}, {lat.ci_high:.3f}] (re-measured with the front, interleaved; noise "
                               f"{noise:.1%} from an A/A pair)")
        chosen = onnx.load_from_string(best.model)
    summary["settings_worth"] = settings_worth(trials, space)
    return TuneResult(chosen, best, front, trials, final, space, summary)


def aa_noise(aa: Latency | None) -> float:
    """How far the input's A/A ratio (its interval included) strays from 1, at least ``MIN_NOISE``."""
    if aa is None or not aa.ok or aa.ci_low is None:
        return MIN_NOISE
    return max(MIN_NOISE, 1.0 - aa.ci_low, aa.ci_high - 1.0)


def _faster(latency: Latency | None, noise: float) -> bool:
    """Faster than the input beyond the noise: the ratio's whole interval below ``1 - noise``."""
    return bool(latency and latency.ok and latency.ci_high is not None and latency.ci_high < 1.0 - noise)


def _not_slower(latency: Latency | None, noise: float) -> bool:
    """Not measurably slower than the input: the ratio's whole interval below ``1 + noise``."""
    return bool(latency and latency.ok and latency.ci_low is not None and latency.ci_high < 1.0 + noise)


def _final_score(trial: Trial, by_label: dict[str, Latency], goal: Objective) -> float:
    """The objective with the final, re-measured latency ratio."""
    return goal.score(latency=by_label[f"t{trial.seq}"].ratio, size=trial.size_ratio or 1.0,
                      accuracy=accuracy_loss(trial.scores), memory=trial.memory_ratio)


def settings_worth(trials: list[Trial], space: Space) -> dict[str, dict[str, float]]:
    """For each searched session setting, the median latency ratio of the measured trials per value."""
    import statistics

    out: dict[str, dict[str, float]] = {}
    for dim in space.dims:
        if not dim.name.startswith("session."):
            continue
        by_value: dict[str, list[float]] = {}
        for t in trials:
            if t.status == "ok" and t.latency and t.latency.ratio is not None:
                by_value.setdefault(str(t.point.get(dim.name, dim.default)), []).append(t.latency.ratio)
        out[dim.name] = {v: round(statistics.median(r), 4) for v, r in by_value.items()}
    return out
