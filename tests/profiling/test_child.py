"""The measurement child stands alone: stdlib, numpy and onnxruntime only, run as a script under a
Python interpreter that the parent chooses."""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.profiling import child
from onnxopt.profiling.measure import CHILD, Item, measure
from tests.conftest import DIGITS
from tests.profiling.helpers import fast_profile

ALLOWED = {"numpy", "onnxruntime", "__future__"}


def _imports(path: Path) -> list[str]:
    """Every module the file imports, at any depth (function-level too); relative ones as '.name'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
    return found


def test_the_child_imports_only_the_stdlib_numpy_and_onnxruntime():
    imports = _imports(CHILD)
    assert "onnxruntime" in imports and "numpy" in imports
    foreign = [m for m in imports if m.startswith(".") or (m.split(".")[0] not in sys.stdlib_module_names
                                                           and m.split(".")[0] not in ALLOWED)]
    assert foreign == []
    assert CHILD == Path(child.__file__).resolve()


def _interpreter(tmp_path: Path, blocked: str) -> str:
    """An executable that runs a script like python does, with ``blocked`` made unimportable."""
    wrapper = tmp_path / f"python-without-{blocked}"
    code = (f"import runpy, sys; sys.modules[{blocked!r}] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{code}" "$@"\n', encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def _digits() -> Item:
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    return Item("digits", onnx.load(DIGITS), [{"input": x[:1]}, {"input": x[1:]}])


@pytest.mark.skipif(os.name != "posix", reason="the wrapper interpreter is a shell script")
def test_the_child_runs_as_a_script_under_an_interpreter_without_onnxopt(tmp_path):
    [result] = measure([_digits()], fast_profile(), interpreter=_interpreter(tmp_path, "onnxopt"))
    assert result.ok, result.error
    assert result.latency_ms.median > 0 and result.placement.nodes["CPUExecutionProvider"] > 5
    assert result.onnxruntime_version


@pytest.mark.skipif(os.name != "posix", reason="the wrapper interpreter is a shell script")
def test_an_interpreter_without_onnxruntime_is_a_failed_measurement_saying_so(tmp_path):
    [result] = measure([_digits()], fast_profile(), interpreter=_interpreter(tmp_path, "onnxruntime"))
    assert not result.ok and result.failure == "error"
    assert result.error.startswith("ModuleNotFoundError") and "onnxruntime" in result.error
    assert f"interpreter {sys.executable}" in result.error


def test_a_missing_interpreter_is_an_error():
    with pytest.raises(FileNotFoundError):
        measure([_digits()], fast_profile(), interpreter="/nonexistent/python")
