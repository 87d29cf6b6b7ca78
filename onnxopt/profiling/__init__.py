"""Latency measurement on device profiles (the API verb is ``onnxopt.profile(model, profile="cpu-1t")``).

Modules: ``profiles`` (TOML device profiles, validation, ``extends``), ``child`` (the standalone
script that opens, times and runs sessions: stdlib, numpy and onnxruntime only), ``measure`` (its
parent side: jobs, timeouts, typed results), ``ab`` (interleaved A/B with ratios), ``service``
(the measurer that passes get through their context), ``edge`` (ORT format, mobile usability),
``settings`` (``ort_config`` metadata, sidecar JSON), ``profiler`` (the ``profile()`` facade).
See docs/profiles.md for the profile schema.
"""

from __future__ import annotations

from onnxopt.profiling.profiles import Profile, get_profile, profiles

__all__ = ["Profile", "get_profile", "profiles"]
