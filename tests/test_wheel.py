"""What a user gets from ``pip install onnxopt``: the wheel carries the device profiles, and the
installed command lists them and measures a model, run from a folder outside the repository.

The wheel is built from a copy of the sources (so the shared checkout gets no build/ or egg-info)
and installed into a fresh venv; its dependencies come from PyPI through pip's cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DIGITS, ROOT

SHIPPED = sorted(p.stem for p in (ROOT / "onnxopt" / "profiling" / "profiles").glob("*.toml"))


def _run(args: list, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def _build_wheel(tmp: Path) -> Path:
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "onnxopt", source / "onnxopt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", source], cwd=tmp)
    return next((tmp / "dist").glob("onnxopt-*.whl"))


@pytest.mark.slow
@pytest.mark.network
def test_wheel_installs_with_its_profiles_and_measures_from_outside_the_repo(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        packed = sorted(Path(n).stem for n in archive.namelist() if n.startswith("onnxopt/profiling/profiles/"))
    assert packed == SHIPPED

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    _run([env_dir / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    model = shutil.copy(DIGITS, work / "digits_cnn.onnx")
    exe = env_dir / "bin" / "onnxopt"

    where = _run([env_dir / "bin" / "python", "-c", "import onnxopt; print(onnxopt.__file__)"], cwd=work)
    assert Path(where.stdout.strip()).is_relative_to(env_dir)  # the installed copy, not the repo's

    listed = json.loads(_run([exe, "profiles", "--json"], cwd=work).stdout)
    assert sorted(row["name"] for row in listed) == SHIPPED

    report = json.loads(_run([exe, "profile", model, "--profile", "cpu-1t", "--json"], cwd=work).stdout)
    assert report["profile"] == "cpu-1t"  # exit code 0 above: every model was measured
    result = report["results"][0]
    assert result["ok"] and result["latency_ms"]["median"] > 0 and result["latency_ms"]["n"] > 0
