"""What "best" means: the latency ratio alone (the default), or a weighted mix of latency, size,
accuracy loss and memory, each relative to the input model (``--objective latency=1,size=0.5``).

The score is the weighted mean of the candidate's latency ratio, size ratio, accuracy loss
(1 - cosine, or the metric drop) and memory ratio; the input model scores the weighted mean of
1, 1, 0 and 1. Lower is better.

Example::

    Objective.parse("latency=1,size=0.5").score(latency=0.8, size=0.3, accuracy=0.001, memory=0.9)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from onnxopt.errors import ConfigError

TERMS = ("latency", "size", "accuracy", "memory")


@dataclass(frozen=True)
class Objective:
    latency: float = 1.0
    size: float = 0.0
    accuracy: float = 0.0
    memory: float = 0.0

    @classmethod
    def parse(cls, text: str | None) -> Objective:
        if not text or text.strip() == "latency":
            return cls()
        weights = dict.fromkeys(TERMS, 0.0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = re.fullmatch(r"(latency|size|accuracy|memory)\s*=\s*([0-9.eE+-]+)", part)
            if not match or float(match.group(2)) < 0:
                raise ConfigError(f"bad objective term {part!r}",
                                  "write weights such as latency=1,size=0.5 (terms: latency, size, accuracy, memory)")
            weights[match.group(1)] = float(match.group(2))
        if sum(weights.values()) <= 0:
            raise ConfigError("the objective's weights are all zero", "e.g. latency=1,size=0.5")
        return cls(**weights)

    @property
    def latency_only(self) -> bool:
        return self.size == self.accuracy == self.memory == 0

    def score(self, *, latency: float, size: float, accuracy: float, memory: float | None) -> float:
        memory = 1.0 if memory is None else memory
        parts = ((self.latency, latency), (self.size, size), (self.accuracy, accuracy), (self.memory, memory))
        return sum(w * x for w, x in parts) / sum(w for w, _ in parts)

    def input_score(self) -> float:
        return self.score(latency=1.0, size=1.0, accuracy=0.0, memory=1.0)

    def describe(self) -> str:
        if self.latency_only:
            return "latency"
        return ",".join(f"{t}={getattr(self, t):g}" for t in TERMS if getattr(self, t))


def accuracy_loss(scores: dict) -> float:
    """The metric drop when measured, else 1 - the worst output's mean cosine."""
    drop = scores.get("max_drop")
    return float(drop) if drop is not None else 1.0 - float(scores.get("cosine") or 0.0)
