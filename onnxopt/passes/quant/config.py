"""The ``quantize`` pass's config (what the implementation modules take) and its target-dependent defaults.

The pass itself is in :mod:`onnxopt.passes.quant.quantize`; the config sits below it so that the
modules doing the work can read it without importing the pass that calls them.

Defaults that depend on the target are ``None`` in the config and filled by :func:`resolve`:
from the device profile when one is given (duck-typed: ``profile.accelerates.quant_formats`` such
as ``["qdq-s8s8"]``, ``activation_symmetric``, ``weight_symmetric``, ``per_channel``), otherwise
the format measured fastest on x86-64 CPUs with onnxruntime's CPU provider (QDQ, u8 activations,
s8 per-channel weights: ``benchmarks/quantization.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import field_validator

from onnxopt.errors import ConfigError
from onnxopt.passes.base import PassConfig, StrList

QType = Literal["u8", "s8", "u16", "s16"]
X86_DEFAULT = ("qdq", "u8", "s8")
X86_REASON = "QDQ, u8 activations, s8 per-channel weights: the fastest int8 format on x86 CPUs with onnxruntime"


class QuantizeConfig(PassConfig):
    """Options of ``quantize``; see ``onnxopt passes`` for the list."""

    mode: Literal["static", "dynamic", "weight-only"] = "static"
    format: Literal["qdq", "qoperator"] | None = None
    per_channel: bool | None = None
    activation_type: QType | None = None
    weight_type: QType | None = None
    symmetric_activations: bool | None = None
    symmetric_weights: bool | None = None
    reduce_range: bool = False
    method: Literal["minmax", "entropy", "percentile", "distribution", "mse"] = "minmax"  # mse: see quant.calib
    percentile: float = 99.999
    calib_size: int = 64
    calib_memory: str | None = None  # e.g. "512M"; default min(1 GiB, a quarter of free memory)
    op_types: StrList = ()
    exclude: StrList = ()  # node names or regular expressions (full match)
    pre_process: bool = True
    fold: bool = True  # static: fold constant affine ops into Convs, fuse hardswish (fewer tensors to round)
    rounding: Literal["nearest", "gptq"] = "nearest"  # static QDQ weights: gptq fits codes to the inputs (quant.gptq)
    bits: int = 8  # weight-only: 8 (per-channel) or 4 (block-wise MatMulNBits)
    block_size: int = 32  # weight-only int4
    algorithm: Literal["rtn", "hqq", "gptq"] = "rtn"  # weight-only int4
    target: str | None = None  # accuracy-keeping fallback, e.g. "cosine>=0.999" or "top1>=0.99|max_drop=0.01"
    eval: str | None = None  # "module:function", a metric (outputs, labels) -> float for max_drop
    # target: sensitive nodes go float, or 16-bit (QDQ only): int16 = u16 activations and s16 weights,
    # a16w8 = u16 activations with the 8-bit weights (what QNN's HTP runs; pair it with rounding=gptq)
    fallback: Literal["float", "int16", "a16w8"] = "float"
    latency_aware: bool = False  # keep in float the nodes that do not get faster

    @field_validator("exclude")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return value

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        if value not in (4, 8):
            raise ValueError("must be 4 or 8")
        return value

    @field_validator("calib_size", "block_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("percentile")
    @classmethod
    def _percent(cls, value: float) -> float:
        if not 50.0 < value <= 100.0:
            raise ValueError("must be in (50, 100]")
        return value


@dataclass(frozen=True)
class Resolved:
    """Concrete static/dynamic settings after target defaults are applied, and where they came from."""

    format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    symmetric_activations: bool
    symmetric_weights: bool
    reason: str


def profile_formats(profile) -> list[tuple[str, str, str]]:
    """``profile.accelerates.quant_formats`` parsed: "qdq-u8s8" -> ("qdq", "u8", "s8")."""
    accel = getattr(profile, "accelerates", None)
    found = []
    for text in getattr(accel, "quant_formats", None) or []:
        match = re.fullmatch(r"(qdq|qoperator)-([us](?:8|16))([us](?:8|16))", str(text).strip().lower())
        if match:
            found.append((match.group(1), match.group(2), match.group(3)))
    return found


def resolve(cfg: QuantizeConfig, profile=None) -> Resolved:
    """Fill the target-dependent options: the user's value, else the profile's, else x86 CPU's."""
    accel = getattr(profile, "accelerates", None)
    formats = profile_formats(profile)
    if formats:
        fmt, act, wgt = formats[0]
        name = getattr(profile, "name", "the device profile")
        reason = f"{fmt.upper()}, {act} activations, {wgt} weights: the first format profile {name!r} accelerates"
    else:
        fmt, act, wgt = X86_DEFAULT
        reason = X86_REASON + (" (the profile names no quantization format)" if profile is not None else
                               " (no target profile given)")
    def pick(value, attr, default):
        if value is not None:
            return value
        return getattr(accel, attr, default) if accel is not None and formats else default

    resolved = Resolved(
        format=cfg.format or fmt, activation_type=cfg.activation_type or act, weight_type=cfg.weight_type or wgt,
        per_channel=pick(cfg.per_channel, "per_channel", True),
        symmetric_activations=pick(cfg.symmetric_activations, "activation_symmetric", False),
        symmetric_weights=pick(cfg.symmetric_weights, "weight_symmetric", True),
        reason=reason,
    )
    if resolved.format == "qoperator" and "16" in resolved.activation_type + resolved.weight_type:
        raise ConfigError("16-bit types need format=qdq", "use format=qdq or 8-bit types")
    return resolved


def ort_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"u8": QuantType.QUInt8, "s8": QuantType.QInt8, "u16": QuantType.QUInt16, "s16": QuantType.QInt16}[name]
