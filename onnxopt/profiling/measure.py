"""Latency measurement in a child process: the parent side.

Each measurement runs in a fresh process started with ``spawn`` (no inherited onnxruntime state or
threads), with a timeout. A crash (signal, ``os._exit``), a hang or an exception in the child becomes
a :class:`Measurement` with ``ok = False`` and the reason; the parent goes on. A provider the profile
needs but this onnxruntime lacks is an error before anything runs (unless the profile allows fallback).

Example::

    item = Item("digits", model, feeds)
    [result] = measure([item], get_profile("cpu-1t"))
    result.latency_ms.median, result.placement.nodes
"""

from __future__ import annotations

import multiprocessing
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import MeasurementError, ProviderUnavailableError
from onnxopt.profiling.profiles import PROVIDER_PACKAGES, Profile
from onnxopt.profiling.results import Measurement, Placement, latency_stats

CPU = "CPUExecutionProvider"
POLL_S = 0.1


@dataclass
class Item:
    """One model to measure, with the feeds it cycles through (the same every run)."""

    label: str
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    synthetic: bool = True
    source: str = ""
    batch_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chain:
    """The providers to ask for, their options, the plugin modules to load (provider -> module),
    and a note when some were dropped (fallback allowed)."""

    names: list[str]
    options: list[dict[str, str]]
    note: str | None = None
    plugins: dict[str, str] = field(default_factory=dict)


def provider_chain(profile: Profile, available: Sequence[str] | None = None) -> Chain:
    """The profile's providers that this onnxruntime has (or whose plugin package is installed); a
    missing one is an error unless fallback is allowed."""
    import importlib.util

    import onnxruntime as ort

    available = list(ort.get_available_providers() if available is None else available)
    available += [p.name for p in profile.providers if p.plugin and importlib.util.find_spec(p.plugin) is not None]
    missing = [p.name for p in profile.providers if p.name not in available]
    if missing and not profile.allow_fallback:
        name = missing[0]
        package = PROVIDER_PACKAGES.get(name, "an onnxruntime build that includes it")
        raise ProviderUnavailableError(
            f"profile {profile.name!r} needs {name}, which this onnxruntime {ort.__version__} does not have "
            f"(available: {', '.join(available)})",
            f"install {package} in place of onnxruntime, or set allow_fallback = true in the profile",
        )
    kept = [p for p in profile.providers if p.name in available]
    names, options = [p.name for p in kept], [p.ort_options() for p in kept]
    if CPU not in names:
        names.append(CPU)
        options.append({})
    note = (f"{', '.join(missing)} not available in this onnxruntime; measured on {names[0]} "
            "because the profile sets allow_fallback = true") if missing else None
    return Chain(names, options, note, {p.name: p.plugin for p in kept if p.plugin})


def measure(items: Sequence[Item], profile: Profile, *, timeout_s: float | None = None,
            fault: str | None = None) -> list[Measurement]:
    """Measure the items interleaved in one child process; one Measurement per item, in order.

    ``fault`` is a test-only hook ("abort", "exit", "hang") that makes the child die or hang."""
    return measure_with_times(items, profile, timeout_s=timeout_s, fault=fault)[0]


def measure_with_times(items: Sequence[Item], profile: Profile, *, timeout_s: float | None = None,
                       fault: str | None = None) -> tuple[list[Measurement], list[list[float]]]:
    """``measure`` plus each item's raw per-round seconds (empty lists when the measurement failed)."""
    if not items:
        raise MeasurementError("nothing to measure")
    chain = provider_chain(profile)
    with tempfile.TemporaryDirectory(prefix="onnxopt-profile-") as tmp:
        paths = []
        for index, item in enumerate(items):
            path = Path(tmp) / f"model{index}.onnx"
            path.write_bytes(item.model.SerializeToString())
            paths.append(str(path))
        job = {"paths": paths, "feeds": [item.feeds for item in items],
               "providers": list(zip(chain.names, chain.options, strict=True)), "plugins": chain.plugins,
               "session": profile.session.model_dump(mode="json"), "protocol": profile.measure.model_dump(),
               "allow_fallback": profile.allow_fallback, "fault": fault, "tmp": tmp,
               "target": profile.provider}
        status, payload, wall = run_child(job, timeout_s or profile.measure.timeout_s)
    if status == "provider":
        raise ProviderUnavailableError(payload, "install the provider's runtime libraries or allow fallback")
    if status != "ok":
        return [_failed(item, profile, chain, status, payload, wall) for item in items], [[] for _ in items]
    results = [_measured(item, profile, chain, model, payload)
               for item, model in zip(items, payload["models"], strict=True)]
    return results, [model["times"] for model in payload["models"]]


def run_child(job: dict[str, Any], timeout_s: float) -> tuple[str, Any, float]:
    """Run the job in a spawned process; ``(status, payload, seconds)`` with status ok/error/crash/timeout/provider."""
    from onnxopt.profiling.child import child_main

    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=child_main, args=(sender, job), daemon=True, name="onnxopt-measure")
    start = time.monotonic()
    process.start()
    sender.close()  # so a dead child shows up as EOF on our end
    try:
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= timeout_s:
                return "timeout", f"no result within {timeout_s:g} s (hung or too slow); the child was killed", elapsed
            if receiver.poll(min(POLL_S, timeout_s - elapsed)):
                try:
                    status, payload = receiver.recv()
                except EOFError:
                    process.join(5)
                    return "crash", _death(process.exitcode), time.monotonic() - start
                return status, payload, time.monotonic() - start
            if not process.is_alive() and not receiver.poll():
                return "crash", _death(process.exitcode), time.monotonic() - start
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        receiver.close()


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"the measurement process was killed by {signal.Signals(-code).name} (onnxruntime crashed)"
        except ValueError:
            pass
    return f"the measurement process exited with code {code} without a result"


def _common(item: Item, profile: Profile, chain: Chain) -> dict[str, Any]:
    return {"model": item.label, "profile": profile.name, "provider": profile.provider,
            "providers_requested": [p.name for p in profile.providers], "fallback": chain.note is not None,
            "fallback_note": chain.note, "batch_size": item.batch_size,
            "target_rel_ci": profile.measure.target_rel_ci, "inputs_synthetic": item.synthetic,
            "inputs_source": item.source, "session": profile.session.model_dump(mode="json")}


def _failed(item: Item, profile: Profile, chain: Chain, status: str, reason: str, wall: float) -> Measurement:
    failure = status if status in ("crash", "timeout") else "error"
    return Measurement(ok=False, failure=failure, error=reason, measure_s=wall, **_common(item, profile, chain))


def _measured(item: Item, profile: Profile, chain: Chain, model: dict[str, Any], job: dict[str, Any]) -> Measurement:
    stats = latency_stats(model["times"])
    common = _common(item, profile, chain)
    if model["lost"]:
        note = f"onnxruntime did not load {', '.join(model['lost'])}; allowed by allow_fallback = true"
        common.update(fallback=True, fallback_note="; ".join(filter(None, [chain.note, note])))
    return Measurement(
        ok=True, providers_used=model["providers_used"], placement=Placement(**model["placement"]),
        latency_ms=stats, session_create_ms=model["session_create_ms"],
        first_inference_ms=model["first_inference_ms"], throughput_per_s=item.batch_size * 1e3 / stats.median,
        peak_rss_mb=job["peak_rss_mb"], session_rss_mb=model["session_rss_mb"],
        target_reached=job["target_reached"], measure_s=job["measure_s"],
        onnxruntime_version=job["onnxruntime_version"], **common,
    )

