"""Every hand-written CUDA source of kernels/gpu and a few generated fused kernels compile with
`nvcc --cubin -arch=sm_90` (H100/H200), the check that stands in for running them where no GPU
is available. The sources are plain CUDA C++ with extern "C" entry points and no #include, the
same text CuPy's NVRTC compiles (checked too where CuPy and its NVRTC are installed). Skipped
without nvcc."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from graphopt.kernels.gpu import codegen, cuda_attention, cuda_data, cuda_nn
from graphopt.kernels.gpu.cuda_common import PRELUDE

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")

SOURCES = {**cuda_nn.SOURCES, **cuda_attention.SOURCES, **cuda_data.SOURCES}


def _generated() -> dict[str, str]:
    b = codegen.ProgramBuilder()
    for op, ins, out, attrs in [("Add", ["x", "b"], "t0", {}), ("Gelu", ["t0"], "t1", {"approximate": "tanh"}),
                                ("Mul", ["t1", "s"], "t2", {}), ("Clip", ["t2", "lo", "hi"], "t3", {}),
                                ("LeakyRelu", ["t3"], "t4", {"alpha": 0.2}), ("Sigmoid", ["t4"], "y", {})]:
        assert b.add(op, ins, attrs, out)
    program = b.build(["y"])
    shapes = {"full": [(8, 16)] * 5, "strided": [(4, 8, 16), (16,), (4, 1, 1), (), ()]}
    bodies = []
    for dtype in ("float32", "float16", "float64"):
        for sh in shapes.values():
            chain, _, _ = codegen.specialize(program, sh, dtype)
            name, src = codegen.cuda_source(chain)
            assert src.startswith(PRELUDE)
            bodies.append(src[len(PRELUDE):])
    return {"fused_chains": PRELUDE + "".join(bodies)}  # one translation unit: one nvcc run


def _compile(label: str, source: str, folder) -> tuple[str, str | None]:
    path = folder / f"{label}.cu"
    path.write_text(source)
    res = subprocess.run([NVCC, "--cubin", "-arch=sm_90", "-o", str(path.with_suffix(".cubin")), str(path)],
                         capture_output=True, text=True, timeout=300)
    return label, None if res.returncode == 0 else res.stderr[-3000:]


@needs_nvcc
def test_every_kernel_source_and_generated_kernels_compile_for_sm90(tmp_path):
    todo = {**SOURCES, **_generated()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda kv: _compile(kv[0], kv[1], tmp_path), todo.items()))
    failures = {label: err for label, err in results if err}
    assert not failures, "\n".join(f"{k}:\n{v}" for k, v in failures.items())
    for label in todo:
        assert (tmp_path / f"{label}.cubin").stat().st_size > 0


def test_entry_points_the_wrappers_call_exist_in_the_sources():
    """The names kernels/gpu/*.py launch (go_<kernel>_<suffix>) are defined extern "C" in a source."""
    defined = {m for src in SOURCES.values() for m in re.findall(r'extern "C" __global__ void (\w+)\(', src)}
    wanted = {"go_softmax_f32", "go_softmax_f16", "go_norm_f32", "go_norm_f16", "go_gelu_f32", "go_gelu_f16",
              "go_pool_f32", "go_pool_f16", "go_resize_axis_f32", "go_gather_b4", "go_gather_b8",
              "go_transpose2d_b2", "go_transpose2d_b4", "go_permute_b4", "go_scatter_nd_b4",
              "go_scatter_elements_f32", "go_quantize_f32_u8", "go_quantize_f16_i8", "go_dequantize_u8_f32",
              "go_dequantize_i8_f16", "go_im2col_b2", "go_im2col_b4", "go_depthwise_f32", "go_depthwise_f16"}
    wanted |= {f"go_attention_{t}_d{d}" for t in ("f32", "f16") for d in cuda_attention.HEAD_DIMS}
    assert wanted <= defined, sorted(wanted - defined)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception:  # CuPy or its NVRTC library missing
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="CuPy's NVRTC is not available")
def test_sources_compile_with_cupys_nvrtc_and_options():
    """The compiler CuPy's RawModule uses at run time, with the runtime's options, for sm_90."""
    from graphopt.kernels.gpu.cupy_runtime import _OPTIONS  # imports CuPy: fine, NVRTC needs it anyway
    nvrtc = _nvrtc()
    failures = {}
    for label, source in {**SOURCES, **_generated()}.items():
        prog = nvrtc.createProgram(source, f"{label}.cu", [], [])
        try:
            nvrtc.compileProgram(prog, list(_OPTIONS) + ["--gpu-architecture=compute_90"])
            assert nvrtc.getPTX(prog)
        except nvrtc.NVRTCError:
            failures[label] = nvrtc.getProgramLog(prog)[-3000:]
    assert not failures, failures
