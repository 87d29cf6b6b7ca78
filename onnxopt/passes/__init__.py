"""Passes: pure ModelProto -> ModelProto transforms, found by name in one registry.

Importing this package registers the built-in passes; each module defers its heavy imports
(onnx-graphsurgeon, onnxruntime) to ``apply`` so listing passes stays fast.
"""

# imported for their @register side effect (each imports base directly, so order does not matter)
from onnxopt.passes import prune, quant, simplify  # noqa: F401
from onnxopt.passes.base import (
    Choice,
    Pass,
    PassConfig,
    PassContext,
    PassRecord,
    Range,
    StrList,
    get_pass,
    register,
    registered,
    run_pass,
)
from onnxopt.passes.pipeline import Pipeline, build, load_recipe, parse_spec

__all__ = [
    "Choice", "Pass", "PassConfig", "PassContext", "PassRecord", "Pipeline", "Range", "StrList",
    "build", "get_pass", "load_recipe", "parse_spec", "register", "registered", "run_pass",
]
