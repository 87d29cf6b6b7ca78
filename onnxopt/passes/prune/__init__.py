"""Structured channel pruning and weight sparsity on ONNX graphs (layer: passes).

Three concerns in three places, as in Torch-Pruning: ``groups``/``analyze`` find coupled channels
(with per-op ``handlers``), ``importance`` scores them, ``ratios`` decides how many go; ``apply``
cuts, ``recover`` re-fits consumers on calibration data, ``sparsify`` zeroes single weights.
The passes are ``prune`` (module ``prune``) and ``sparsify``.
"""

from onnxopt.passes.prune.prune import Prune, PruneConfig
from onnxopt.passes.prune.sparsify import Sparsify, SparsifyConfig

__all__ = ["Prune", "PruneConfig", "Sparsify", "SparsifyConfig"]
