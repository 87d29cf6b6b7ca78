"""The search loop: seeds first, then the strategy's asks, each trial built in a worker and measured
on the target interleaved with the input model; the final candidates re-measured together.

Strategies: ``ngopt`` (nevergrad's NGOpt, the default), ``random``, ``bo`` (nevergrad's Bayesian
optimizer), ``cma``, ``de``, ``portfolio``, and ``grid`` (every point of the discretized space,
in order; nevergrad has no grid optimizer). The optimizer is seeded and told trials in ask order,
so the same seed asks the same sequence, and a re-run replays cached trials without rebuilding them.

Example::

    tuner = Tuner(model, space, payload, meter, strategy="ngopt", budget=20, seed=0)
    trials = tuner.run()
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxopt.errors import ConfigError
from onnxopt.tuning.cache import TrialCache, digest
from onnxopt.tuning.meter import Latency, Meter
from onnxopt.tuning.objective import Objective, accuracy_loss
from onnxopt.tuning.space import Space
from onnxopt.tuning.trial import Payload, init_worker, run_in_worker, run_trial

STRATEGIES = {"ngopt": "NGOpt", "random": "RandomSearch", "bo": "BO", "cma": "CMA", "de": "DE",
              "portfolio": "Portfolio", "grid": None}
FAILED_LOSS = 10.0  # told for a candidate that could not be built, run or measured
VIOLATION_LOSS = 2.0  # plus the target deficit, for a candidate that breaks the accuracy target
MAX_PENALTY = 5.0  # the largest target deficit told to nevergrad (its models need finite values)
MAX_ASKS_PER_TRIAL = 20  # a small discrete space makes optimizers re-ask known points: stop then


@dataclass
class Trial:
    """One evaluated point: its pipeline, session settings, scores and latency (or why it failed)."""

    seq: int
    key: str
    point: dict[str, Any]
    spec: str
    session: dict[str, Any]
    status: str  # ok | violates | failed
    origin: str = "search"  # input / seed name / search / grid
    stage: str | None = None
    reason: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    margin: float | None = None
    size: int | None = None
    params: int | None = None
    macs: int | None = None
    latency: Latency | None = None
    size_ratio: float | None = None  # size / the input's size
    memory_ratio: float | None = None  # session memory / the input's, measured in the same run
    loss: float = FAILED_LOSS
    cached: bool = False
    model: bytes | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = self.latency
        return {"seq": self.seq, "origin": self.origin, "status": self.status, "spec": self.spec,
                "session": self.session, "ratio": lat.ratio if lat else None, "ci_low": lat.ci_low if lat else None,
                "ci_high": lat.ci_high if lat else None, "median_ms": lat.median_ms if lat else None,
                "memory_mb": lat.memory_mb if lat else None, "size": self.size, "params": self.params,
                "macs": self.macs, **{f"score_{k}": v for k, v in self.scores.items()}, "loss": self.loss,
                "stage": self.stage, "reason": self.reason, "cached": self.cached, "point": self.point}

    def stored(self) -> dict[str, Any]:
        """What the cache keeps (everything but the model bytes)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("model", "latency", "cached")}
        out["latency"] = self.latency.row() if self.latency else None
        return out

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Trial:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "latency"}
        trial = cls(**fields)
        trial.latency = Latency(**data["latency"]) if data.get("latency") else None
        trial.cached = True
        return trial


Event = Callable[[str, dict[str, Any]], None]


class Tuner:
    """Runs one search; ``run()`` returns every trial in the order they were told."""

    def __init__(self, model: onnx.ModelProto, space: Space, payload: Payload, meter: Meter, *,
                 strategy: str = "ngopt", budget: int = 20, time_s: float | None = None, seed: int = 0,
                 jobs: int = 1, cache: TrialCache | None = None, context_key: str = "",
                 seeds: list[tuple[str, dict[str, Any]]] | None = None, executor: cf.Executor | None = None,
                 trial_timeout_s: float = 900.0, on_event: Event | None = None, objective: Objective | None = None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}", f"valid: {', '.join(STRATEGIES)}")
        self.model, self.space, self.payload, self.meter = model, space, payload, meter
        self.strategy, self.budget, self.time_s, self.seed, self.jobs = strategy, budget, time_s, seed, max(1, jobs)
        self.cache = cache or TrialCache(None)
        self.context_key, self.seeds = context_key, seeds or []
        self.user_executor, self.trial_timeout_s = executor, trial_timeout_s
        self.on_event = on_event or (lambda kind, data: None)
        self.objective = objective or Objective()
        self.trials: list[Trial] = []
        self._pool: cf.Executor | None = None
        self._known: dict[str, Trial] = {}

    # ------------------------------------------------------------ the loop

    def run(self) -> list[Trial]:
        deadline = time.monotonic() + self.time_s if self.time_s else None
        self._preload()
        try:
            if self.strategy == "grid":
                self._run_grid(deadline)
            else:
                self._run_optimizer(deadline)
        except BaseException:  # Ctrl-C or an error: end the workers now (finished trials are in the cache)
            self._close_pool(kill=True)
            raise
        self._close_pool()
        return self.trials

    def _run_grid(self, deadline: float | None) -> None:
        points = [("grid", p) for p in self.space.grid()][: self.budget]
        for start in range(0, len(points), self.jobs):
            if deadline and time.monotonic() > deadline:
                break
            self._evaluate(points[start:start + self.jobs])

    def _run_optimizer(self, deadline: float | None) -> None:
        import nevergrad as ng

        parametrization = self.space.parametrization(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nevergrad warns about discrete spaces for BO/CMA: expected here
            optimizer = ng.optimizers.registry[STRATEGIES[self.strategy]](
                parametrization, budget=self.budget * MAX_ASKS_PER_TRIAL, num_workers=self.jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for trial in self.trials:  # finished by an earlier run: the optimizer continues from them
                optimizer.tell(parametrization.spawn_child(new_value=self._full(trial.point)), trial.loss,
                               constraint_violation=self._violation(trial))
        told = {trial.key for trial in self.trials}
        for _, point in self.seeds:
            optimizer.suggest(self._full(point))
        # nevergrad hands suggestions back in its own order: name them by their point
        origins = {self.space.key(self._full(point)): name for name, point in self.seeds}
        asks = 0
        while len(self._known) < self.budget and asks < self.budget * MAX_ASKS_PER_TRIAL:
            if deadline and time.monotonic() > deadline:
                break
            room = min(self.jobs, self.budget - len(self._known))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidates = [optimizer.ask() for _ in range(room)]
            asks += room
            batch = [(origins.pop(self.space.key(c.value), "search"), c.value) for c in candidates]
            for candidate, trial in zip(candidates, self._evaluate(batch), strict=True):
                if trial.key in told:  # a point asked again: telling it twice breaks BO (bayes_opt refuses)
                    continue
                told.add(trial.key)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optimizer.tell(candidate, trial.loss, constraint_violation=self._violation(trial))

    def _preload(self) -> None:
        """Trials an earlier run of this context finished (a killed or shorter run) come first and
        count in the budget; points outside this run's space (another recipe) are left in the cache."""
        for stored in self.cache.trials(self.context_key):
            if len(self._known) >= self.budget:
                break
            trial = Trial.from_stored(stored)
            if trial.key in self._known or not self.space.contains(trial.point):
                continue
            trial.seq, trial.loss = len(self.trials) + 1, self._loss(trial)
            self._known[trial.key] = trial
            self.trials.append(trial)
            self.on_event("trial", {"trial": trial})

    @staticmethod
    def _violation(trial: Trial) -> list[float] | None:
        """nevergrad's constraint violation: the target deficit for a trial that was not measured."""
        return None if trial.status == "ok" else [max(1e-3, _deficit(trial))]

    def _full(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """A complete value for the parametrization: the seed's values over every dimension's default."""
        full = {d.name: d.default for d in self.space.dims}
        full.update({k: v for k, v in point.items() if k in full})
        return full

    # ------------------------------------------------------------ evaluating

    def _evaluate(self, batch: list[tuple[str, Mapping[str, Any]]]) -> list[Trial]:
        """Build the batch in parallel, then measure one at a time, in ask order; one trial per
        distinct point (a point asked again, in this batch or before, is answered from memory or the cache)."""
        seen: dict[str, Trial] = {}
        pending: dict[int, Trial] = {}
        jobs: dict[int, dict[str, Any]] = {}
        for index, (origin, raw) in enumerate(batch):
            point = self.space.canonical(raw)
            key = self.space.key(point)
            if key in self._known or key in seen:
                continue
            seq = len(self.trials) + len(seen) + 1
            trial = self._from_cache(key, seq)
            if trial is None:
                trial = Trial(seq, key, point, self.space.spec(point), self.space.session(point), "failed",
                              origin=origin)
                pending[index] = trial
                jobs[index] = {"steps": self.space.pipeline(point), "seed": self.seed, "spec": trial.spec}
            seen[key] = trial
        built = self._build(jobs)
        for index, trial in pending.items():
            self._score(trial, built[index])
        for trial in seen.values():
            self._known[trial.key] = trial
            self.trials.append(trial)
            self.on_event("trial", {"trial": trial})
        return [self._known[self.space.key(self.space.canonical(raw))] for _, raw in batch]

    def _from_cache(self, key: str, seq: int) -> Trial | None:
        stored = self.cache.get(self._cache_key(key))
        if not stored:
            return None
        trial = Trial.from_stored(stored)
        trial.seq = seq  # its place in this run, and its loss under this run's objective
        trial.loss = self._loss(trial)
        return trial

    def _cache_key(self, key: str) -> str:
        return digest(self.context_key, key)

    def _score(self, trial: Trial, result: dict[str, Any]) -> None:
        trial.status, trial.notes = result["status"], result.get("notes", [])
        trial.stage, trial.reason = result.get("stage"), result.get("reason")
        if trial.status != "failed":
            trial.scores, trial.margin = result["scores"], result["margin"]
            trial.size, trial.params, trial.macs = result["size"], result["params"], result["macs"]
            trial.model = result["model"]
        if trial.status == "ok":
            self.on_event("measuring", {"trial": trial})
            reference, latency = self.meter([("input", self.model, {}),
                                              (f"t{trial.seq}", onnx.load_from_string(trial.model), trial.session)])
            trial.latency = latency
            if not latency.ok or latency.ratio is None:
                trial.status, trial.stage, trial.reason = "failed", "measure", latency.error
            elif reference.memory_mb and latency.memory_mb is not None:
                trial.memory_ratio = latency.memory_mb / reference.memory_mb
        if trial.size is not None:
            trial.size_ratio = trial.size / len(self.payload.model)
        trial.loss = self._loss(trial)
        self.cache.put(self._cache_key(trial.key), self.context_key, trial.seq, trial.point, trial.stored())

    def _loss(self, trial: Trial) -> float:
        """What nevergrad minimizes: the objective for a measured trial, a penalty otherwise."""
        if trial.status == "ok":
            return self.objective.score(latency=trial.latency.ratio, size=trial.size_ratio or 1.0,
                                        accuracy=accuracy_loss(trial.scores), memory=trial.memory_ratio)
        if trial.status == "violates":
            return VIOLATION_LOSS + _deficit(trial)
        return FAILED_LOSS

    def rebuild(self, trials: list[Trial]) -> None:
        """Give trials reused from the cache (they carry no model) their model again: the same input
        and config build the same bytes. A build that fails now leaves the trial without one."""
        missing = {i: {"steps": self.space.pipeline(t.point), "seed": self.seed, "spec": t.spec}
                   for i, t in enumerate(trials) if t.model is None}
        if not missing:
            return
        built = self._build(missing)
        self._close_pool()
        for i, result in built.items():
            if result.get("model"):
                trials[i].model = result["model"]

    def _build(self, jobs: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Run the builds in the executor; a dead or hung worker fails its trial and the pool is renewed.

        A worker death breaks the whole pool, so the other trials in flight are re-run one at a time
        (which also finds the one that killed it)."""
        results: dict[int, dict[str, Any]] = {}
        futures = {index: self._submit(job) for index, job in jobs.items()}
        broken = []
        for index, future in futures.items():
            try:
                results[index] = future.result(timeout=self.trial_timeout_s)
            except cf.TimeoutError:
                results[index] = _lost("hang", f"no result within {self.trial_timeout_s:g} s; the worker was killed")
                self._close_pool(kill=True)
            except cf.process.BrokenProcessPool:
                broken.append(index)
                self._close_pool(kill=True)
            except Exception as exc:  # recorded, not swallowed: another executor's lost worker (Dask's KilledWorker)
                results[index] = _lost("crash", f"the trial's worker failed: {type(exc).__name__}: {exc}")
        for index in broken:
            if len(futures) == 1:
                results[index] = _lost("crash", "the trial's worker process died (onnxruntime or a pass crashed, "
                                                "or it ran out of memory)")
            else:
                results[index] = self._build({index: jobs[index]})[index]
        return results

    def _submit(self, job: dict[str, Any]) -> cf.Future:
        if self.user_executor is not None:
            return self.user_executor.submit(run_trial, self.payload, job)
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=init_worker, initargs=(self.payload,))
        return self._pool.submit(run_in_worker, job)

    def _close_pool(self, kill: bool = False) -> None:
        if self._pool is None:
            return
        if kill:  # a hung worker ignores shutdown: end the processes (the executor has no public kill)
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
        self._pool.shutdown(wait=not kill, cancel_futures=True)
        self._pool = None


def _deficit(trial: Trial) -> float:
    """How far a trial missed the target, capped (a target the outputs cannot give has margin -inf,
    and nevergrad's models need finite values); 1 for a trial that never got scored."""
    if trial.margin is None:
        return 1.0
    return min(MAX_PENALTY, max(0.0, -trial.margin))


def _lost(kind: str, reason: str) -> dict[str, Any]:
    return {"status": "failed", "stage": kind, "reason": reason}

