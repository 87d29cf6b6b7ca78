"""Latency profiling on device profiles: ``onnxopt.profile(model, profile="cpu-1t")``.

Modules: ``profiles`` (TOML device profiles, validation, ``extends``), ``measure`` (the spawned,
time-limited child process), ``compare`` (interleaved A/B), ``edge`` (ORT format, mobile
usability), ``settings`` (session options, ``ort_config`` metadata, sidecar JSON), ``profiler``
(the ``profile()`` facade). See docs/profiles.md for the profile schema.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from onnxopt.profile.profiles import Profile, get_profile, profiles

__all__ = ["Profile", "get_profile", "profiles"]


class _CallableModule(types.ModuleType):
    """``onnxopt.profile`` is both this package and the API verb ``profile()``: once the package is
    imported, Python binds the name to the module, so the module itself must be callable."""

    def __call__(self, *args: Any, **kwargs: Any):
        from onnxopt.profile.profiler import profile

        return profile(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
