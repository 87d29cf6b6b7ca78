"""Measurement in a child process: the parent side.

Every job (time models, profile one model's nodes, run one for its outputs) is written into a
temporary folder (``job.json``, the models, their feeds as ``.npz``) and run by
:mod:`onnxopt.profiling.child` as a script under a Python interpreter (this one by default; any with
numpy and onnxruntime will do), with a timeout. A crash (signal, exit), a hang or an exception in the
child becomes a :class:`Measurement` with ``ok = False`` and the reason; the parent goes on. A
provider the profile needs but this onnxruntime lacks is an error before anything runs (unless the
profile allows fallback). Each item is opened with its own session settings, so one interleaved run
can compare one model under two settings.

Example::

    item = Item("digits", model, feeds)
    [result] = measure([item], get_profile("cpu-1t"))
    result.latency_ms.median, result.placement.nodes
    one, two = SessionSettings(intra_op_threads=1), SessionSettings(intra_op_threads=2)
    measure([Item("1t", model, feeds, session=one), Item("2t", model, feeds, session=two)], profile)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import MeasurementError, ProviderUnavailableError
from onnxopt.profiling import child
from onnxopt.profiling.profiles import PROVIDER_PACKAGES, Profile, SessionSettings
from onnxopt.profiling.results import Measurement, Placement, latency_stats

CPU = "CPUExecutionProvider"
CHILD = Path(child.__file__).resolve()


@dataclass
class Item:
    """One model to measure, with the feeds it cycles through (the same every run) and its session
    settings (None: the profile's ``[session]``)."""

    label: str
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    synthetic: bool = True
    source: str = ""
    batch_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    session: SessionSettings | None = None

    def settings(self, profile: Profile) -> SessionSettings:
        return self.session if self.session is not None else profile.session


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
            fault: str | None = None, interpreter: str | None = None) -> list[Measurement]:
    """Measure the items interleaved in one child process; one Measurement per item, in order.

    ``interpreter`` runs the child (default: this Python); ``fault`` is a test-only hook ("abort",
    "exit", "hang") that makes the child die or hang."""
    return measure_with_times(items, profile, timeout_s=timeout_s, fault=fault, interpreter=interpreter)[0]


def measure_with_times(items: Sequence[Item], profile: Profile, *, timeout_s: float | None = None,
                       fault: str | None = None, interpreter: str | None = None
                       ) -> tuple[list[Measurement], list[list[float]]]:
    """``measure`` plus each item's raw per-round seconds (empty lists when the measurement failed)."""
    if not items:
        raise MeasurementError("nothing to measure")
    with run_job("time", items, profile, timeout_s=timeout_s, fault=fault, interpreter=interpreter) as done:
        pass
    if done.status != "ok":
        return ([_failed(item, profile, done) for item in items], [[] for _ in items])
    results = [_measured(item, profile, done.chain, model, done.payload)
               for item, model in zip(items, done.payload["models"], strict=True)]
    return results, [model["times"] for model in done.payload["models"]]


@dataclass
class Done:
    """A finished child run: status ok/error/crash/timeout, its payload (the reason when not ok), wall
    seconds, and the job folder (which exists only inside :func:`run_job`'s ``with`` block)."""

    chain: Chain
    status: str
    payload: Any
    wall: float
    folder: Path


@contextmanager
def run_job(kind: str, items: Sequence[Item], profile: Profile, *, timeout_s: float | None = None,
            fault: str | None = None, interpreter: str | None = None, **options: Any) -> Iterator[Done]:
    """Write a ``kind`` job (see :mod:`onnxopt.profiling.child`) for the items, run the child on it and
    yield what came back while the folder (with files the child wrote) still exists. A provider
    the child could not load is :class:`ProviderUnavailableError`."""
    chain = provider_chain(profile)
    with tempfile.TemporaryDirectory(prefix="onnxopt-measure-") as tmp:
        folder = Path(tmp)
        job = {"kind": kind, "models": _write_items(items, profile, folder),
               "providers": list(zip(chain.names, chain.options, strict=True)), "plugins": chain.plugins,
               "protocol": profile.measure.model_dump(), "allow_fallback": profile.allow_fallback,
               "fault": fault, "target": profile.provider, **options}
        (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        status, payload, wall = run_child(folder, timeout_s or profile.measure.timeout_s, interpreter)
        if status == "provider":
            raise ProviderUnavailableError(payload, "install the provider's runtime libraries or allow fallback")
        yield Done(chain, status, payload, wall, folder)


def _write_items(items: Sequence[Item], profile: Profile, folder: Path) -> list[dict[str, Any]]:
    """Each item's model, feeds (``.npz``, keys ``"<sample>|<input>"``) and session settings on disk;
    items that share one feeds list share its file."""
    written: dict[int, str] = {}
    specs = []
    for index, item in enumerate(items):
        path = folder / f"model{index}.onnx"
        path.write_bytes(item.model.SerializeToString())
        if id(item.feeds) not in written:
            feeds = folder / f"feeds{len(written)}.npz"
            np.savez(feeds, **{f"{i}|{name}": np.asarray(value) for i, feed in enumerate(item.feeds)
                               for name, value in feed.items()})
            written[id(item.feeds)] = str(feeds)
        specs.append({"path": str(path), "feeds": written[id(item.feeds)],
                      "session": item.settings(profile).model_dump(mode="json")})
    return specs


def run_child(folder: Path, timeout_s: float, interpreter: str | None = None) -> tuple[str, Any, float]:
    """Run the child script on the job in ``folder`` under ``interpreter`` (default: this Python);
    ``(status, payload, seconds)`` with status ok/error/crash/timeout/provider."""
    log = folder / "child.log"
    start = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen([interpreter or sys.executable, str(CHILD), str(folder)],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "timeout", f"no result within {timeout_s:g} s (hung or too slow); the child was killed", \
                time.monotonic() - start
        finally:  # also on Ctrl-C: never leave a child running
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.monotonic() - start
    result = folder / "result.json"
    if not result.is_file():
        return "crash", _death(code, log), wall
    data = json.loads(result.read_text(encoding="utf-8"))
    return data["status"], data["payload"], wall


def _death(code: int | None, log: Path) -> str:
    """Why the child gave no result: its signal or exit code, and the last line it printed."""
    why = f"the measurement process exited with code {code} without a result"
    if code is not None and code < 0:
        try:
            why = f"the measurement process was killed by {signal.Signals(-code).name} (onnxruntime crashed)"
        except ValueError:
            pass
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.is_file() else []
    return f"{why}: {lines[-1][:300]}" if lines else why


def _common(item: Item, profile: Profile, chain: Chain) -> dict[str, Any]:
    return {"model": item.label, "profile": profile.name, "provider": profile.provider,
            "providers_requested": [p.name for p in profile.providers], "fallback": chain.note is not None,
            "fallback_note": chain.note, "batch_size": item.batch_size,
            "target_rel_ci": profile.measure.target_rel_ci, "inputs_synthetic": item.synthetic,
            "inputs_source": item.source, "session": item.settings(profile).model_dump(mode="json")}


def _failed(item: Item, profile: Profile, done: Done) -> Measurement:
    failure = done.status if done.status in ("crash", "timeout") else "error"
    return Measurement(ok=False, failure=failure, error=done.payload, measure_s=done.wall,
                       **_common(item, profile, done.chain))


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
