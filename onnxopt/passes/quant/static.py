"""Static int8/int16 quantization: prepare once, calibrate once (memory-bounded), quantize any subset.

:class:`StaticQuantizer` keeps the prepared float model and its calibration ranges, so the
accuracy-keeping and latency-aware modes can re-quantize with different node subsets in float
without calibrating again.

Example::

    q = StaticQuantizer(model, dataset, cfg, resolve(cfg))
    int8 = q.quantize()                     # everything the op types allow
    partial = q.quantize(keep_float={"Conv_12"})
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

import onnx

from onnxopt.errors import ConfigError
from onnxopt.model import input_specs, parse_size
from onnxopt.passes.quant.calib import activation_levels, calibrate, percentile_ranges, save_ranges
from onnxopt.passes.quant.config import QuantizeConfig, Resolved, ort_type
from onnxopt.passes.quant.ortio import quiet, read_model, workdir, write_model
from onnxopt.passes.quant.prepare import prepare


def match_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> tuple[set[str], list[str]]:
    """Node names matched by exact name or full regex match; also the patterns that matched nothing."""
    names = [n.name for n in model.graph.node if n.name]
    matched, unmatched = set(), []
    for pattern in patterns:
        hits = {n for n in names if n == pattern or re.fullmatch(pattern, n)}
        matched |= hits
        if not hits:
            unmatched.append(pattern)
    return matched, unmatched


def default_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


class StaticQuantizer:
    """A prepared, calibrated model that can be quantized with any set of nodes kept in float."""

    def __init__(self, model: onnx.ModelProto, data, cfg: QuantizeConfig, settings: Resolved):
        if data is None:
            raise ConfigError("static quantization needs calibration data",
                              "pass --calib data.npz (or an image folder); --calib synthetic only for a smoke test")
        self.cfg, self.settings, self.notes, self.data = cfg, settings, [], data
        self.wide_ranges = None  # ranges for 16-bit tensors when ``ranges`` are clipped (see clipped())
        # rounding=gptq: the GPTQ rounder (its codes), shared with the clipped() copies
        self._gptq: dict = {"rounder": None}
        prepared = prepare(model, run_pre_process=cfg.pre_process, fold=cfg.fold)
        self.model, self.notes = prepared.model, list(prepared.notes)
        self.op_types = list(cfg.op_types) or default_op_types()
        self.excluded, unmatched = match_nodes(self.model, cfg.exclude)
        if unmatched:
            self.notes.append(f"exclude pattern(s) matched no node: {', '.join(unmatched)}")
        if self.excluded:
            self.notes.append(f"kept {len(self.excluded)} node(s) in float as asked (exclude)")
        if getattr(data, "synthetic", False):
            self.notes.append("WARNING: calibrated on SYNTHETIC random inputs; ranges may not fit real data")
        self.budget = parse_size(cfg.calib_memory) if cfg.calib_memory else None  # bytes; None: the default
        with workdir() as work, quiet():
            src = write_model(self.model, work / "float.onnx")
            self.ranges, self.info = calibrate(
                src, data, input_specs(self.model), workdir=work, method=cfg.method, op_types=self.op_types,
                samples=cfg.calib_size, percentile=cfg.percentile, symmetric=settings.symmetric_activations,
                budget=self.budget, levels=self.levels())
        self.notes.append(self.info.describe())

    def levels(self) -> int:
        """qmax - qmin of the activation grid: what ``mse`` calibration sizes its thresholds for."""
        return activation_levels(self.settings.activation_type, self.settings.symmetric_activations)

    def clipped(self, percentiles: Sequence[float]) -> dict[float, StaticQuantizer]:
        """Copies of this quantizer calibrated by percentile (one histogram pass for all), sharing the
        prepared model. Their 16-bit tensors (:mod:`.wide`) keep this quantizer's ranges: 16 bits
        have the resolution for the whole range, and clipping there would only add error."""
        with workdir() as work, quiet():
            src = write_model(self.model, work / "float.onnx")
            found = percentile_ranges(src, self.data, input_specs(self.model), percentiles, workdir=work,
                                      op_types=self.op_types, samples=self.cfg.calib_size,
                                      symmetric=self.settings.symmetric_activations,
                                      budget=self.budget)
        clones = {}
        for percentile, ranges in found.items():
            clone = copy.copy(self)
            clone.ranges, clone.wide_ranges = ranges, self.wide_ranges or self.ranges
            clone.info = replace(self.info, method=f"percentile {percentile:g}")
            clones[percentile] = clone
        return clones

    def quantizable(self) -> list[str]:
        """Names of the nodes whose op type will be quantized (candidates for keeping in float)."""
        wanted = set(self.op_types)
        return [n.name for n in self.model.graph.node if n.op_type in wanted and n.name and n.name not in self.excluded]

    def quantize(self, keep_float: Iterable[str] = (), overrides: dict | None = None) -> onnx.ModelProto:
        """Quantize all but ``keep_float``; ``overrides`` are onnxruntime ``TensorQuantOverrides``
        (tensor -> [{"quant_type": ...}], e.g. 16-bit for sensitive tensors; see :mod:`.wide`)."""
        from onnxruntime.quantization import QuantFormat, quantize_static

        s = self.settings
        exclude = sorted(self.excluded | set(keep_float))
        extra: dict = {"ActivationSymmetric": s.symmetric_activations, "WeightSymmetric": s.symmetric_weights}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        if "16" in s.activation_type + s.weight_type or overrides:
            extra["UseQDQContribOps"] = self.model.opset_import[0].version < 21
        with workdir() as work, quiet():
            src = write_model(self.model, work / "float.onnx")
            cache = save_ranges(self.ranges, work / "ranges.json")
            quantize_static(
                str(src), str(work / "int8.onnx"), None,
                quant_format=QuantFormat.QDQ if s.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=self.op_types, per_channel=s.per_channel, reduce_range=self.cfg.reduce_range,
                activation_type=ort_type(s.activation_type), weight_type=ort_type(s.weight_type),
                nodes_to_exclude=exclude, calibrate_method=self.ranges.calibration_method,
                extra_options=extra, calibration_cache_path=str(cache),
            )
            quantized = read_model(work / "int8.onnx")
        if self.cfg.rounding == "gptq" and s.format == "qdq":
            self._round_by_gptq(quantized)
        return quantized

    def gptq_report(self, model: onnx.ModelProto):
        """What ``rounding=gptq`` did to ``model``, one of :meth:`quantize`'s results (from the cache)."""
        return self._round_by_gptq(model)

    def _round_by_gptq(self, quantized: onnx.ModelProto):
        """GPTQ codes for the weights of ``quantized`` (:mod:`.gptq`): input moments measured within
        the calibration memory budget, codes kept while a weight's scales stay the same."""
        from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

        from onnxopt.passes.quant.calib import memory_budget
        from onnxopt.passes.quant.gptq import Rounder

        if self._gptq["rounder"] is None:
            self._gptq["rounder"] = Rounder(self.model, self.data, samples=self.cfg.calib_size,
                                            budget=memory_budget(self.budget), names=self.quantizable())
        symmetric, reduce = self.settings.symmetric_weights, self.cfg.reduce_range
        return self._gptq["rounder"].refine_qdq(
            quantized, lambda dtype: tuple(int(v) for v in get_qmin_qmax_for_qType(dtype, reduce, symmetric)))
