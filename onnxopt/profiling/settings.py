"""Session settings carried with a model: the ``ort_config`` metadata and a sidecar JSON (the
SessionOptions themselves are built by the measurement child, ``child.session_options``).

onnxruntime reads a model's ``ort_config`` metadata (JSON ``{"session_options": {...}}``) when
``ORT_LOAD_CONFIG_FROM_MODEL=1``, but only for intra/inter-op threads, execution mode, graph
optimization level and profiling. Everything else a profile sets (providers and their options,
arena, spinning, config entries) goes into a sidecar JSON next to the model.

Example::

    tuned = embed_settings(model, get_profile("cpu-1t"))
    write_settings(tuned, get_profile("cpu-1t"), "out/", "digits")   # out/digits.onnx + .ort_settings.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx

from onnxopt import model as model_io
from onnxopt.profiling.child import OPT_LEVELS
from onnxopt.profiling.profiles import Profile, SessionSettings

ORT_CONFIG_KEY = "ort_config"
SIDECAR_SUFFIX = ".ort_settings.json"


def ort_config(settings: SessionSettings) -> dict[str, Any]:
    """The ``ort_config`` JSON object onnxruntime understands (the subset it can read from a model)."""
    return {"session_options": {
        "intra_op_num_threads": settings.intra_op_threads,
        "inter_op_num_threads": settings.inter_op_threads,
        "execution_mode": 1 if settings.execution_mode == "parallel" else 0,
        "graph_optimization_level": OPT_LEVELS[settings.graph_optimization_level],
    }}


def sidecar(profile: Profile) -> dict[str, Any]:
    """Everything needed to recreate the measured session: providers, options, all session settings."""
    import onnxruntime as ort

    return {
        "profile": profile.name,
        "providers": [{"name": p.name, "options": p.ort_options()} for p in profile.providers],
        "session": profile.session.model_dump(mode="json"),
        ORT_CONFIG_KEY: ort_config(profile.session),
        "onnxruntime_version": ort.__version__,
        "load_config_from_model": "set ORT_LOAD_CONFIG_FROM_MODEL=1 to apply the embedded ort_config",
    }


def embed_settings(model: onnx.ModelProto, profile: Profile) -> onnx.ModelProto:
    """A copy of ``model`` whose metadata carries the profile's ``ort_config`` (replacing an old one)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [(p.key, p.value) for p in out.metadata_props if p.key != ORT_CONFIG_KEY]
    del out.metadata_props[:]
    for key, value in kept:
        out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key=ORT_CONFIG_KEY, value=json.dumps(ort_config(profile.session), sort_keys=True))
    return out


def read_settings(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The model's ``ort_config`` metadata as a dict, or None when it has none."""
    for prop in model.metadata_props:
        if prop.key == ORT_CONFIG_KEY:
            return json.loads(prop.value)
    return None


def write_settings(model: onnx.ModelProto, profile: Profile, out_dir: str | os.PathLike, stem: str,
                   protect: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """Write ``stem.onnx`` with embedded settings and ``stem.ort_settings.json`` into ``out_dir`` (atomically)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = model_io.save(embed_settings(model, profile), folder / f"{stem}.onnx", protect=protect)
    side = folder / f"{stem}{SIDECAR_SUFFIX}"
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(sidecar(profile), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, side)
    return [model_path, side]
