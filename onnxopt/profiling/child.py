"""The measurement child: the one place where onnxruntime sessions are opened and timed.

The parent (:mod:`onnxopt.profiling.measure`) starts it as ``INTERPRETER child.py JOBDIR``. It imports
only the standard library, numpy and onnxruntime (never ``onnxopt``), so it runs under any Python
that has those two, such as a profile's own venv. JOBDIR holds ``job.json``, the models and their
feeds (``.npz``); the child writes ``result.json`` there, ``{"status": ..., "payload": ...}`` with
status ``ok``, ``error`` or ``provider``. A crash or a hang is the parent's to detect.

Jobs (``job["kind"]``), each model opened with its own session settings on the provider chain:

- ``time``: session-creation and first-inference time, node placement (from onnxruntime's profiling
  trace of the first run), warm-up, then the models timed interleaved (A B A B ...) until the
  protocol is satisfied;
- ``nodes``: onnxruntime's node profiler over warm runs: each kernel's microseconds per run, and the
  optimized graph the kernels belong to (``optimized<i>.onnx``);
- ``outputs``: every feed's outputs (``outputs<i>.npz``), to score a model on the target itself.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MAX_OFF_TARGET = 50
KERNEL_SUFFIX = "_kernel_time"
_REGISTERED: set[str] = set()  # plugin EPs registered in this process
Z95 = 1.959964
# onnxruntime's GraphOptimizationLevel values, as its ort_config parser also expects them
OPT_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "layout": 3, "all": 99}


class ProviderLost(RuntimeError):
    """onnxruntime was asked for a provider it has but did not load it (e.g. missing CUDA libraries)."""


def main(folder: str) -> None:
    """Run ``folder/job.json`` and write ``folder/result.json`` (atomically: a file there is complete)."""
    job = json.loads((Path(folder) / "job.json").read_text(encoding="utf-8"))
    try:
        result = {"status": "ok", "payload": run_job(job, Path(folder))}
    except ProviderLost as exc:
        result = {"status": "provider", "payload": str(exc)}
    except ImportError as exc:  # this interpreter lacks numpy or onnxruntime (or a plugin's package)
        result = {"status": "error", "payload": f"{type(exc).__name__}: {exc} (interpreter {sys.executable})"}
    except Exception as exc:  # the process boundary: every failure goes back to the parent, which records it
        result = {"status": "error", "payload": f"{type(exc).__name__}: {' '.join(str(exc).split())[:800]}"}
    tmp = Path(folder) / "result.json.tmp"
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, Path(folder) / "result.json")


def run_job(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    names = [name for name, _ in job["providers"]]
    devices = plugin_devices(job.get("plugins", {}), names, job["allow_fallback"])
    run = {"time": time_models, "nodes": profile_nodes, "outputs": run_outputs}[job["kind"]]
    payload = run(job, folder, devices)
    payload.update(onnxruntime_version=ort.__version__, peak_rss_mb=peak_rss_mb())
    return payload


def open_model(job: dict[str, Any], index: int, devices, **extra: Any):
    """Model ``index`` of the job as ``(session, feeds, providers used, providers lost, seconds to open)``;
    ``extra`` sets SessionOptions attributes (profiling). A lost provider is an error unless allowed."""
    spec = job["models"][index]
    so = session_options(spec["session"])
    for key, value in extra.items():
        setattr(so, key, value)
    names = [name for name, _ in job["providers"]]
    start = time.perf_counter()
    session = open_session(spec["path"], so, names, [opts for _, opts in job["providers"]], devices)
    created = time.perf_counter() - start
    used = session.get_providers()
    lost = [n for n in names if n not in used]
    if lost and not job["allow_fallback"]:
        raise ProviderLost(f"onnxruntime did not load {', '.join(lost)} (it used {', '.join(used)}); "
                           "its libraries (e.g. CUDA, cuDNN, TensorRT) are missing or failed to initialize")
    _fault(job.get("fault"))
    return session, load_feeds(spec["feeds"]), used, lost, created


def session_options(settings: dict[str, Any]):
    """An ``onnxruntime.SessionOptions`` from a profile's ``[session]`` table (the plain-dict form of
    ``onnxopt.profiling.profiles.SessionSettings``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = settings["intra_op_threads"]
    so.inter_op_num_threads = settings["inter_op_threads"]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if settings["execution_mode"] == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.graph_optimization_level = ort.GraphOptimizationLevel(OPT_LEVELS[settings["graph_optimization_level"]])
    so.enable_cpu_mem_arena = settings["enable_cpu_mem_arena"]
    so.enable_mem_pattern = settings["enable_mem_pattern"]
    spin = "1" if settings["allow_spinning"] else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    for key, value in settings.get("config_entries", {}).items():
        so.add_session_config_entry(key, value)
    so.log_severity_level = 3  # onnxruntime's warnings would go to the parent's stderr; results carry what matters
    return so


def open_session(model, so, names: list[str], options: list[dict], devices: dict[str, list] | None):
    """An onnxruntime session over ``model`` (path or bytes) on the provider chain; with plugin EPs
    (``devices`` from :func:`plugin_devices`) each provider is attached to its device instead,
    the order of the calls being the priority order."""
    import onnxruntime as ort

    if devices is None:
        return ort.InferenceSession(model, so, providers=names, provider_options=options)
    for name, opts in zip(names, options, strict=True):
        if devices.get(name):
            so.add_provider_for_devices(devices[name], opts)
    return ort.InferenceSession(model, so)


def plugin_devices(plugins: dict[str, str], names: list[str], allow_fallback: bool) -> dict[str, list] | None:
    """Register the plugin EP libraries and find each provider's devices (None without plugins).

    A plugin that loads but finds no device (WebGPU without a Vulkan loader or a GPU) is
    :class:`ProviderLost`, unless fallback is allowed; then it is left out of the chain."""
    if not plugins:
        return None
    import importlib

    import onnxruntime as ort

    for name, module in plugins.items():
        if name in _REGISTERED:  # onnxruntime refuses a second registration in one process
            continue
        library = importlib.import_module(module).get_library_path()
        try:
            ort.register_execution_provider_library(name, library)
        except Exception as exc:  # onnxruntime raises its own Fail type; the message says what is wrong
            raise ProviderLost(f"onnxruntime could not load the {name} plugin ({library}): {exc}") from exc
        _REGISTERED.add(name)
    found: dict[str, list] = {}
    for device in ort.get_ep_devices():
        found.setdefault(device.ep_name, []).append(device)
    missing = [n for n in plugins if not found.get(n)]
    if missing and not allow_fallback:
        raise ProviderLost(f"the {', '.join(missing)} plugin loaded but found no device to run on "
                           f"(devices: {', '.join(sorted(found)) or 'none'}); a GPU plugin needs the GPU's "
                           "driver, and WebGPU on Linux the Vulkan loader libvulkan.so.1")
    # the first device of each provider: plugin EPs such as WebGPU take one and pick the GPU themselves
    return {name: found.get(name, [])[:1] for name in names}


def load_feeds(path: str) -> list[dict[str, Any]]:
    """The feeds the parent saved: keys ``"<sample>|<input name>"``, samples in order."""
    import numpy as np

    with np.load(path, allow_pickle=False) as arrays:
        feeds: dict[int, dict[str, Any]] = {}
        for key in arrays.files:
            sample, _, name = key.partition("|")
            feeds.setdefault(int(sample), {})[name] = arrays[key]
    return [feeds[i] for i in sorted(feeds)]


# ---------------------------------------------------------------- jobs


def time_models(job: dict[str, Any], folder: Path, devices) -> dict[str, Any]:
    """Open every model (timed, placement traced on the first run), warm up, time them interleaved."""
    sessions, feeds, models = [], [], []
    for index in range(len(job["models"])):
        before = peak_rss_mb()
        session, model_feeds, used, lost, created = open_model(
            job, index, devices, enable_profiling=True, profile_file_prefix=str(folder / f"placement{index}"))
        start = time.perf_counter()
        session.run(None, model_feeds[0])
        first = time.perf_counter() - start
        placement = parse_trace(session.end_profiling(), job["target"])
        after = peak_rss_mb()
        sessions.append(session)
        feeds.append(model_feeds)
        models.append({"session_create_ms": created * 1e3, "first_inference_ms": first * 1e3,
                       "providers_used": used, "lost": lost, "placement": placement,
                       "session_rss_mb": None if before is None or after is None else after - before})
    protocol = job["protocol"]
    for session, model_feeds in zip(sessions, feeds, strict=True):
        end, i = time.perf_counter() + protocol["warmup_s"] / len(sessions), 0
        while i < protocol["warmup"] or time.perf_counter() < end:
            session.run(None, model_feeds[i % len(model_feeds)])
            i += 1
    times, reached, elapsed = interleaved(sessions, feeds, protocol)
    for model, model_times in zip(models, times, strict=True):
        model["times"] = model_times
    return {"models": models, "target_reached": reached, "measure_s": elapsed}


def interleaved(sessions: list, feeds: list[list[dict]], protocol: dict[str, Any]
                ) -> tuple[list[list[float]], bool, float]:
    """Run the sessions in turn, one run each per round, until converged or out of budget.

    Each round starts one model further along (A B C, B C A, C A B, ...): a run after another model's
    is not timed like a run after its own (caches, clocks), and a fixed order made an identical copy
    of a model read 1-3% faster in the second place."""
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    next_check, rounds = 0.0, 0
    while True:
        for offset in range(len(sessions)):
            index = (rounds + offset) % len(sessions)
            model_feeds = feeds[index]
            feed = model_feeds[rounds % len(model_feeds)]
            t0 = time.perf_counter_ns()
            sessions[index].run(None, feed)
            times[index].append((time.perf_counter_ns() - t0) / 1e9)
        rounds += 1
        elapsed = time.perf_counter() - start
        ready = rounds >= protocol["min_repeats"] and elapsed >= protocol["min_time_s"]
        if ready and elapsed >= next_check:
            if all(rel_ci(t) <= protocol["target_rel_ci"] for t in times):
                return times, True, elapsed
            # checking sorts every sample; doing it every ~5% of the elapsed time keeps its cost negligible
            next_check = elapsed + max(0.02, 0.05 * elapsed)
        if rounds >= protocol["max_repeats"] or elapsed >= protocol["max_time_s"]:
            return times, all(rel_ci(t) <= protocol["target_rel_ci"] for t in times), elapsed


def profile_nodes(job: dict[str, Any], folder: Path, devices) -> dict[str, Any]:
    """Per kernel, microseconds of each profiled run after the warm-up ones; runs enough times to fill
    ``budget_s`` (within ``min_runs``..``max_runs``), which keeps the trace small."""
    options = job["nodes"]
    session, feeds, used, lost, _ = open_model(
        job, 0, devices, enable_profiling=True, profile_file_prefix=str(folder / "trace"),
        optimized_model_filepath=str(folder / "optimized0.onnx"))
    warmup = options["warmup"]
    start = time.perf_counter()
    for i in range(warmup):
        session.run(None, feeds[i % len(feeds)])
    per_run = (time.perf_counter() - start) / max(warmup, 1)
    runs = int(min(options["max_runs"], max(options["min_runs"], options["budget_s"] / max(per_run, 1e-6))))
    for i in range(runs):
        session.run(None, feeds[i % len(feeds)])
    durations: dict[str, list[float]] = {}
    for event in read_trace(session.end_profiling()):
        name = str(event.get("name", ""))
        if event.get("cat") == "Node" and name.endswith(KERNEL_SUFFIX):
            durations.setdefault(name[: -len(KERNEL_SUFFIX)], []).append(float(event["dur"]))
    kernels = {k: v[warmup:] or v for k, v in durations.items()}
    return {"kernels": kernels, "runs": runs, "optimized": "optimized0.onnx", "providers_used": used, "lost": lost}


def run_outputs(job: dict[str, Any], folder: Path, devices) -> dict[str, Any]:
    """Every feed's outputs, saved as ``outputs0.npz`` with keys ``"<sample>|<output index>"``."""
    import numpy as np

    session, feeds, used, lost, _ = open_model(job, 0, devices)
    arrays = {f"{i}|{k}": value for i, feed in enumerate(feeds) for k, value in enumerate(session.run(None, feed))}
    np.savez(folder / "outputs0.npz", **arrays)
    return {"outputs": "outputs0.npz", "names": [o.name for o in session.get_outputs()], "samples": len(feeds),
            "providers_used": used, "lost": lost}


# ---------------------------------------------------------------- helpers


def read_trace(path: str) -> list[dict[str, Any]]:
    """onnxruntime's Chrome-trace JSON; the file is removed afterwards."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    finally:
        Path(path).unlink(missing_ok=True)


def parse_trace(path: str, target: str) -> dict[str, Any]:
    """Node -> provider from onnxruntime's profiling trace."""
    placed: dict[str, tuple[str, str]] = {}
    for event in read_trace(path):
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(KERNEL_SUFFIX):
            args = event.get("args", {})
            placed[name[: -len(KERNEL_SUFFIX)]] = (args.get("provider", "unknown"), args.get("op_name", "?"))
    ops: dict[str, Counter] = {}
    for provider, op in placed.values():
        ops.setdefault(provider, Counter())[op] += 1
    off = sorted(name for name, (provider, _) in placed.items() if provider != target)
    return {"nodes": {p: sum(c.values()) for p, c in ops.items()}, "ops": {p: dict(c) for p, c in ops.items()},
            "off_target": off[:MAX_OFF_TARGET]}


def median_ci(sorted_values, z: float = Z95) -> tuple[float, float]:
    """Order-statistics confidence interval of the median of already sorted values (distribution-free:
    ranks ``n/2 ± z·√n/2`` bound the median with ~95% confidence)."""
    n = len(sorted_values)
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return float(sorted_values[lo]), float(sorted_values[hi])


def rel_ci(values) -> float:
    """Half-width of the median's CI relative to the median (inf for fewer than 6 values)."""
    import numpy as np

    if len(values) < 6:
        return math.inf
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    med = float(np.median(ordered))
    lo, hi = median_ci(ordered)
    return max(med - lo, hi - med) / med if med > 0 else math.inf


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (None where the platform has no getrusage)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _fault(kind: str | None) -> None:
    """Test-only: make this child die or hang the way a broken onnxruntime would."""
    if kind == "abort":
        os.abort()
    elif kind == "exit":
        os._exit(7)
    elif kind == "hang":
        time.sleep(3600)


if __name__ == "__main__":
    # run as a script, this folder heads sys.path; its modules (profiles, settings, ...) must not
    # shadow anything numpy or onnxruntime imports
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    main(sys.argv[1])
