"""Accuracy targets (``cosine>=0.999``, ``top1>=0.99``, ``iou>=0.9``, ``max_drop=0.01``) and user metrics.

A target is checked against the *float* model's outputs on the same data: ``cosine`` is the worst
output's mean per-sample cosine, ``top1`` the top-1 agreement of class-like outputs, ``iou`` the
mean per-sample IoU of the first output thresholded at 0.3 (a segmentation/text map such as
PP-OCR det's: what its post-processing binarizes; cosine hides a lost faint region), and
``max_drop`` the drop of a metric: the user's ``(outputs, labels) -> float`` callable (``eval``,
``--eval module:function``) or, without one, top-1 accuracy on the data's labels.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.errors import ConfigError

Metric = Callable[[Mapping[str, np.ndarray], np.ndarray | None], float]
KINDS = ("cosine", "top1", "iou", "max_drop")
MASK_THRESHOLD = 0.3  # PP-OCR's DB post-processing binarizes the probability map at 0.3


@dataclass(frozen=True)
class Criterion:
    kind: str
    threshold: float

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.threshold if self.kind == "max_drop" else value >= self.threshold

    def __str__(self) -> str:
        return f"{self.kind}{'<=' if self.kind == 'max_drop' else '>='}{self.threshold:g}"


def parse_target(text: str) -> list[Criterion]:
    """``"cosine>=0.999|top1>=0.99"`` -> criteria (all must hold)."""
    criteria = []
    for part in filter(None, (p.strip() for p in re.split(r"[|;&]", text))):
        match = re.fullmatch(r"(cosine|top1|iou|max_drop|drop)\s*(>=|=|<=)\s*([0-9.eE+-]+)", part)
        if not match:
            raise ConfigError(f"bad target {part!r}",
                              "write cosine>=0.999, top1>=0.99, iou>=0.9 or drop<=0.01 (join with |)")
        kind = "max_drop" if match.group(1) == "drop" else match.group(1)  # drop<=0.01 reads as it means
        criteria.append(Criterion(kind, float(match.group(3))))
    if not criteria:
        raise ConfigError("the target is empty", "e.g. target=cosine>=0.999")
    return criteria


def load_metric(spec: str) -> Metric:
    """``"package.module:function"`` -> the callable ``(outputs, labels) -> float``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"bad metric {spec!r}", "write module:function, e.g. mypkg.metrics:accuracy")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import metric module {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"{module_name} has no callable {attr!r}")
    return func


def mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float = MASK_THRESHOLD) -> float:
    """Mean per-sample IoU of ``reference > threshold`` and ``candidate > threshold`` (leading axis =
    samples); a sample where both masks are empty counts as 1 (they agree)."""
    ref = np.asarray(reference).reshape(len(reference), -1) > threshold
    cand = np.asarray(candidate).reshape(len(candidate), -1) > threshold
    union = (ref | cand).sum(axis=1)
    inter = (ref & cand).sum(axis=1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def _top1_accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float:
    if labels is None:
        raise ConfigError("max_drop needs labelled data or a metric", "pass eval=module:function or labelled data")
    first = np.asarray(next(iter(outputs.values())))
    return float(np.mean(first.reshape(len(labels), -1).argmax(axis=1) == np.asarray(labels).reshape(-1)))


class Judge:
    """Runs candidates on fixed data and scores them against the float reference's outputs."""

    def __init__(self, reference: onnx.ModelProto, data, criteria: list[Criterion], metric: Metric | None = None):
        from onnxopt.runtime import run

        self.data, self.criteria, self.metric = data, criteria, metric or _top1_accuracy
        self.reference = run(reference, data)
        needs_metric = any(c.kind == "max_drop" for c in criteria)
        self.base_metric = self.metric(self.reference, data.labels) if needs_metric else None

    def score(self, candidate: onnx.ModelProto) -> dict[str, float | None]:
        from onnxopt.agreement import compare_outputs
        from onnxopt.runtime import run

        outputs = run(candidate, self.data)
        compared = compare_outputs(self.reference, outputs)
        tops = [o.top1_agreement for o in compared if o.top1_agreement is not None]
        scores: dict[str, float | None] = {"cosine": min(o.cosine_mean for o in compared),
                                           "top1": min(tops) if tops else None, "max_drop": None}
        if any(c.kind == "iou" for c in self.criteria):
            # the first output by position: a converted model may rename its outputs
            scores["iou"] = mask_iou(next(iter(self.reference.values())), next(iter(outputs.values())))
        if self.base_metric is not None:
            scores["max_drop"] = self.base_metric - self.metric(outputs, self.data.labels)
        return scores

    def holds(self, scores: Mapping[str, float | None]) -> bool:
        return all(c.holds(scores.get(c.kind)) for c in self.criteria)

    def margin(self, scores: Mapping[str, float | None]) -> float:
        """How far the worst criterion is above its threshold (negative: missed by that much)."""
        def slack(c: Criterion) -> float:
            value = scores.get(c.kind)
            if value is None:
                return float("-inf")
            return c.threshold - value if c.kind == "max_drop" else value - c.threshold
        return min(slack(c) for c in self.criteria)

    def describe(self, scores: Mapping[str, float | None]) -> str:
        return ", ".join(f"{k}={v:.5f}" for k, v in scores.items() if v is not None)
