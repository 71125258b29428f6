"""GPU packaging without a GPU: the gpu extra names a CuPy wheel, a CPU-only run never imports
CuPy, and device="gpu" without CuPy or without a GPU is one clear Unsupported error (the Python
API and the CLI)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import graphopt
from graphopt.errors import Unsupported

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "convnet" / "model.onnx"


def _cupy_state():
    try:
        import cupy
    except Exception:
        return "missing"
    try:
        return "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "no-gpu"
    except Exception:
        return "no-gpu"


def test_gpu_extra_names_a_cupy_wheel_and_the_package_ships_the_gpu_kernels():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    gpu = meta["project"]["optional-dependencies"]["gpu"]
    assert any(req.startswith(("cupy-cuda12x", "cupy-cuda13x")) for req in gpu), gpu
    assert "graphopt.kernels.gpu" in meta["tool"]["setuptools"]["packages"]


def test_cpu_session_never_imports_cupy():
    code = (
        "import sys, numpy as np, graphopt\n"
        "from graphopt.verify import random_feed\n"
        "import onnx\n"
        f"m = onnx.load({str(MODEL)!r})\n"
        "out = graphopt.Session(m).run(None, random_feed(m, seed=0))\n"
        "assert out[0].shape[0] >= 1\n"
        "import graphopt.kernels.gpu.codegen, graphopt.kernels.gpu.cuda_attention  # pure Python parts\n"
        "print('cupy' in sys.modules, 'cupyx' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


def test_gpu_without_cupy_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError, as on a CPU-only install
    with pytest.raises(Unsupported, match=r"needs CuPy.*graphopt\[gpu\]"):
        graphopt.Session(str(MODEL), device="gpu")


@pytest.mark.skipif(_cupy_state() != "no-gpu", reason="needs CuPy installed on a machine without a usable GPU")
def test_gpu_without_a_device_is_one_clear_error():
    with pytest.raises(Unsupported, match="no usable CUDA GPU"):
        graphopt.Session(str(MODEL), device="gpu")


@pytest.mark.skipif(_cupy_state() == "gpu", reason="a GPU is present: the error path cannot be reached")
def test_cli_device_gpu_prints_one_line_and_exits_1():
    res = subprocess.run([sys.executable, "-m", "graphopt", "run", str(MODEL), "--random", "--device", "gpu"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphopt: error:") and "gpu" in lines[0]
    assert "Traceback" not in res.stderr


def test_unknown_precision_is_a_usage_error(monkeypatch):
    from graphopt.errors import UsageError
    with pytest.raises(UsageError, match="precision"):
        graphopt.Session(str(MODEL), device="gpu", precision="int3")
