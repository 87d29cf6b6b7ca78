"""The tuner: Nevergrad searches the passes' tunable options and the profile's session settings by
latency measured on the target and by accuracy, and returns the Pareto front. (Layer "tune"; the
package is ``tuning`` so that ``onnxopt.tune`` stays the API verb, not a module.)

Modules: ``space`` (the search space from the passes' ``tunable`` declarations), ``trial`` (build and
score one candidate in a worker), ``meter`` (latency through the profiler), ``cache`` (SQLite trial
cache), ``search`` (the ask/tell loop), ``pareto`` (the front), ``run`` (``tune()`` and the final
decision), ``report`` (files and HTML).
"""

from __future__ import annotations

from onnxopt.tuning.run import TuneResult, tune

__all__ = ["TuneResult", "tune"]
