"""onnxopt: make ONNX models smaller and faster for a target, keeping their answers.

The public API is a small facade; heavy modules are imported on first use so that
``import onnxopt`` and ``onnxopt --help`` stay fast::

    import onnxopt
    result = onnxopt.optimize("model.onnx", passes="simplify")
    onnxopt.save(result.model, "model.opt.onnx")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The layer order, lowest first; each layer lists the module prefixes it owns (the longest prefix
# wins; bare "onnxopt" is only the package itself). A module imports its own layer or lower ones:
# tests/test_layers.py reads every import and checks it, and finds import cycles.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": tuple(f"onnxopt.{m}" for m in ("errors", "proto", "model", "images", "data", "stats", "runtime",
                                           "agreement", "tunable", "targets", "zoo")),
    "passes": ("onnxopt.passes",),
    "evaluate": ("onnxopt.evaluate",),
    "profiling": ("onnxopt.profiling",),
    "tune": ("onnxopt.tuning",),
    "batch": ("onnxopt.batch", "onnxopt.executors"),
    "api": ("onnxopt.api", "onnxopt"),
    "cli": ("onnxopt.cli", "onnxopt.cli_tune"),
}

_API = {
    "load": "onnxopt.api",
    "save": "onnxopt.api",
    "inspect": "onnxopt.api",
    "optimize": "onnxopt.api",
    "compare": "onnxopt.api",
    "list_passes": "onnxopt.api",
    "sensitivity": "onnxopt.api",
    "SensitivityReport": "onnxopt.api",
    "profile": "onnxopt.api",
    "ProfileReport": "onnxopt.profiling.profiler",
    "OptimizeResult": "onnxopt.api",
    "OptimizeReport": "onnxopt.api",
    "InspectReport": "onnxopt.api",
    "load_data": "onnxopt.data",
    "Dataset": "onnxopt.data",
    "fidelity": "onnxopt.evaluate",
    "OnnxOptError": "onnxopt.errors",
    "tune": "onnxopt.tuning",
    "TuneResult": "onnxopt.tuning",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
