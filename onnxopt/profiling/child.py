"""The code that runs inside the measurement child process (started with ``spawn``).

It creates one session per model, records session-creation and first-inference time and the node
placement (from onnxruntime's profiling trace of the first run, then profiling is switched off),
warms up, and times the models interleaved (A B A B ...) until the protocol is satisfied. Whatever
happens is sent back over the pipe as plain data; a crash or hang is the parent's to detect.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from onnxopt.profiling.results import rel_ci

MAX_OFF_TARGET = 50
_REGISTERED: set[str] = set()  # plugin EPs registered in this process
KERNEL_SUFFIX = "_kernel_time"


class ProviderLost(RuntimeError):
    """onnxruntime was asked for a provider it has but did not load it (e.g. missing CUDA libraries)."""


def child_main(conn, job: dict[str, Any]) -> None:
    """Entry point of the child: run the job and send ``(status, payload)`` back."""
    try:
        conn.send(("ok", run_job(job)))
    except ProviderLost as exc:
        conn.send(("provider", str(exc)))
    except Exception as exc:  # the process boundary: every failure goes back to the parent, which records it
        conn.send(("error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:800]}"))
    finally:
        conn.close()


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from onnxopt.profiling.profiles import SessionSettings

    ort.set_default_logger_severity(3)
    settings = SessionSettings.model_validate(job["session"])
    names = [name for name, _ in job["providers"]]
    options = [opts for _, opts in job["providers"]]
    devices = plugin_devices(job.get("plugins", {}), names, job["allow_fallback"])
    sessions, models = [], []
    for index, path in enumerate(job["paths"]):
        so = settings.ort_options()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(job["tmp"]) / f"placement{index}")
        before = peak_rss_mb()
        start = time.perf_counter()
        session = open_session(path, so, names, options, devices)
        created = time.perf_counter() - start
        used = session.get_providers()
        lost = [n for n in names if n not in used]
        if lost and not job["allow_fallback"]:
            raise ProviderLost(f"onnxruntime did not load {', '.join(lost)} (it used {', '.join(used)}); "
                               "its libraries (e.g. CUDA, cuDNN, TensorRT) are missing or failed to initialize")
        _fault(job.get("fault"))
        feeds = job["feeds"][index]
        start = time.perf_counter()
        session.run(None, feeds[0])
        first = time.perf_counter() - start
        placement = parse_trace(session.end_profiling(), job["target"])
        after = peak_rss_mb()
        sessions.append(session)
        models.append({"session_create_ms": created * 1e3, "first_inference_ms": first * 1e3,
                       "providers_used": used, "lost": lost, "placement": placement,
                       "session_rss_mb": None if before is None or after is None else after - before})
    protocol = job["protocol"]
    for session, feeds in zip(sessions, job["feeds"], strict=True):
        end, i = time.perf_counter() + protocol["warmup_s"] / len(sessions), 0
        while i < protocol["warmup"] or time.perf_counter() < end:
            session.run(None, feeds[i % len(feeds)])
            i += 1
    times, reached, elapsed = interleaved(sessions, job["feeds"], protocol)
    for model, model_times in zip(models, times, strict=True):
        model["times"] = model_times
    return {"models": models, "target_reached": reached, "measure_s": elapsed, "peak_rss_mb": peak_rss_mb(),
            "onnxruntime_version": ort.__version__}


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


def interleaved(sessions: list, feeds: list[list[dict]], protocol: dict[str, Any]
                ) -> tuple[list[list[float]], bool, float]:
    """Run the sessions in turn, one run each per round, until converged or out of budget."""
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    next_check, rounds = 0.0, 0
    while True:
        for session, model_feeds, model_times in zip(sessions, feeds, times, strict=True):
            feed = model_feeds[rounds % len(model_feeds)]
            t0 = time.perf_counter_ns()
            session.run(None, feed)
            model_times.append((time.perf_counter_ns() - t0) / 1e9)
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


def parse_trace(path: str, target: str) -> dict[str, Any]:
    """Node -> provider from onnxruntime's Chrome-trace JSON; the file is removed afterwards."""
    try:
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)
    finally:
        Path(path).unlink(missing_ok=True)
    placed: dict[str, tuple[str, str]] = {}
    for event in events:
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
