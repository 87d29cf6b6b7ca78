"""What a pass may ask about latency on the target, without importing the profiler.

A pass that chooses by speed (latency-aware quantization) asks ``ctx.measurer``: an object with
the methods of :class:`Measurer`. The profiling layer implements it on a device profile
(``onnxopt.profiling.service.ProfileMeasurer``: the one timing loop, provider chain and session
opening, in the measurement child), ``onnxopt.optimize`` puts one into the context, and tests
may hand in their own.

Example::

    times = ctx.measurer.whole({"fp32": model, "int8": quantized}, feeds)   # seconds per round
    nodes = ctx.measurer.nodes(quantized, feeds)
    nodes.kernels["/conv/Conv_token_3"]   # microseconds of each profiled run
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import onnx

Feeds = Sequence[Mapping[str, np.ndarray]]


@dataclass
class NodeTimes:
    """onnxruntime's node profiler over warm runs of one model: each kernel's microseconds per run,
    the optimized graph those kernels belong to, the provider that ran it and the one the target
    wants (they differ only where the profile allows fallback)."""

    kernels: dict[str, list[float]]
    optimized: onnx.ModelProto
    runs: int
    provider: str
    target: str


@runtime_checkable
class Measurer(Protocol):
    """Latency on a target, measured elsewhere (a child process on the device profile)."""

    @property
    def target(self) -> str:
        """The execution provider the numbers are for."""
        ...

    def whole(self, models: Mapping[str, onnx.ModelProto], feeds: Feeds) -> dict[str, list[float]]:
        """Seconds per round of each model, timed interleaved (one run of each per round)."""
        ...

    def nodes(self, model: onnx.ModelProto, feeds: Feeds, *, budget_s: float = 1.5) -> NodeTimes:
        """Per-kernel times from onnxruntime's node profiler, over about ``budget_s`` of runs."""
        ...
