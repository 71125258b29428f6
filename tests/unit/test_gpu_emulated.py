"""The GPU runtime's host side end to end without CuPy or a GPU: tests/unit/gpu_fake.py runs the GPU
tests' op cases and four golden models through Session(device="gpu") with NumPy standing in for
CuPy and Python restatements of the CUDA kernels, against ONNX Runtime. This checks the plan (host
shape steps and their cache, uploads, fusion, fallbacks, fp16 conversion) and every wrapper's
geometry and kernel arguments; the CUDA code itself is compiled by test_gpu_sources.py and run by
tests/gpu only. gpu_fake_lowering.py does the same for what `--target graphopt` takes into its fused
ops (SkipLayerNormalization's bias input, Q/K/V packed into MatMul + Split)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def test_gpu_runtime_host_side_matches_onnxruntime_with_emulated_kernels():
    # a subprocess: the fake cupy modules must not leak into this test session
    # PYTHONPATH: the same graphopt (this checkout, with models/) as the test session, not an installed wheel
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, str(HERE / "gpu_fake.py")], capture_output=True, text=True, timeout=300,
                         env=env)
    report = res.stdout + res.stderr
    assert res.returncode == 0, report[-4000:]
    assert "fake cupy in use" in res.stdout and " passed" in res.stdout.splitlines()[-1], report[-2000:]


def test_graphopt_target_lowerings_on_the_emulated_gpu():
    """SkipLayerNormalization's 5th input (the bias, constant or fed, with and without the sum output)
    and the packed Q/K/V (MatMul + Split) through Session(device="gpu"), against ONNX Runtime."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, str(HERE / "gpu_fake_lowering.py")], capture_output=True, text=True,
                         timeout=300, env=env, check=False)
    report = res.stdout + res.stderr
    assert res.returncode == 0, report[-4000:]
    assert "fake cupy in use" in res.stdout and " passed" in res.stdout.splitlines()[-1], report[-2000:]
