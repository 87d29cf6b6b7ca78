"""Latency measurement on device profiles (the API verb is ``onnxopt.profile(model, profile="cpu-1t")``).

Modules: ``profiles`` (TOML device profiles, validation, ``extends``), ``measure`` (the spawned,
time-limited child process), ``compare`` (interleaved A/B), ``edge`` (ORT format, mobile
usability), ``settings`` (session options, ``ort_config`` metadata, sidecar JSON), ``profiler``
(the ``profile()`` facade). See docs/profiles.md for the profile schema.
"""

from __future__ import annotations

from onnxopt.profiling.profiles import Profile, get_profile, profiles

__all__ = ["Profile", "get_profile", "profiles"]
