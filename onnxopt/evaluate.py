"""Fidelity (how closely a candidate model's outputs follow the reference's) and top-1 accuracy.

``fidelity`` runs both models on the same data with onnxruntime and compares every output per
sample: cosine similarity (mean and worst sample), max absolute difference, relative L2 error and,
for class-like outputs, how often the top-1 class agrees. All maths is in float64.

Example::

    data = load_data("models/digits_eval.npz", reference)
    report = fidelity(reference, quantized, data)
    assert report.cosine_min > 0.99 and report.top1_agreement >= 0.98
"""

from __future__ import annotations

import onnx
from pydantic import BaseModel, ConfigDict, computed_field

from onnxopt.agreement import OutputFidelity, accuracy, compare_outputs, is_class_like
from onnxopt.data import Dataset
from onnxopt.runtime import run

__all__ = ["Fidelity", "OutputFidelity", "accuracy", "compare_outputs", "fidelity", "is_class_like", "run"]


class Fidelity(BaseModel):
    """Per-output agreement plus where the data came from (synthetic data is always flagged)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    outputs: list[OutputFidelity]
    samples: int
    synthetic: bool
    source: str
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None

    @computed_field
    @property
    def cosine_min(self) -> float:
        return min(o.cosine_min for o in self.outputs)

    @computed_field
    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @computed_field
    @property
    def max_abs_diff(self) -> float:
        return max(o.max_abs_diff for o in self.outputs)

    @computed_field
    @property
    def paired_by_position(self) -> bool:
        return any(o.paired_by_position for o in self.outputs)


def fidelity(reference: onnx.ModelProto, candidate: onnx.ModelProto, data: Dataset, **run_kwargs) -> Fidelity:
    """Run both models on ``data`` and compare their outputs (accuracy too when data has labels)."""
    outputs = compare_outputs(run(reference, data, **run_kwargs), run(candidate, data, **run_kwargs), data.labels)
    primary = outputs[0]
    return Fidelity(
        outputs=outputs,
        samples=len(data),
        synthetic=data.synthetic,
        source=data.source,
        accuracy_reference=primary.accuracy_reference,
        accuracy_candidate=primary.accuracy_candidate,
    )
