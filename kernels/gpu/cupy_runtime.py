"""What every GPU kernel module shares: CuPy, compiled-module caches, launch shapes, host parameters.

Only the GPU session imports this (and so CuPy); a CPU-only install never does.
"""
from __future__ import annotations

import numpy as np

import cupy as cp

from graphopt.errors import Unsupported

from . import codegen, cuda_attention, cuda_data, cuda_nn

SOURCES = {**cuda_nn.SOURCES, **cuda_attention.SOURCES, **cuda_data.SOURCES}
_MODULES: dict[str, "cp.RawModule"] = {}
_FUNCS: dict[tuple[str, str], "cp.RawKernel"] = {}
_OPTIONS = ("--std=c++14",)


def function(source: str, name: str):
    """A kernel from one of the named hand-written sources (compiled by NVRTC once per process)."""
    key = (source, name)
    fn = _FUNCS.get(key)
    if fn is None:
        mod = _MODULES.get(source)
        if mod is None:
            mod = _MODULES[source] = cp.RawModule(code=SOURCES[source], options=_OPTIONS)
        fn = _FUNCS[key] = mod.get_function(name)
    return fn


_FUSED: dict = {}


def fused_function(chain: codegen.Chain):
    fn = _FUSED.get(chain)
    if fn is None:
        name, src = codegen.cuda_source(chain)
        fn = _FUSED[chain] = cp.RawModule(code=src, options=_OPTIONS).get_function(name)
    return fn


def suffix(dtype) -> str:
    """Entry-point suffix of the float kernels for an array dtype."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "f32"
    if dt == np.float16:
        return "f16"
    raise Unsupported(f"no CUDA kernel for element type {dt}")


def width(dtype) -> str:
    """Entry-point suffix of the bit-copying kernels (gather, transpose, scatter)."""
    return {1: "b1", 2: "b2", 4: "b4", 8: "b8"}[np.dtype(dtype).itemsize]


def grid(n: int, block: int = 256) -> tuple[tuple[int], tuple[int]]:
    """A grid-stride launch for n elements: enough blocks to fill the GPU, never more than needed."""
    blocks = max(1, min((int(n) + block - 1) // block, 65535))
    return (blocks,), (block,)


def launch(fn, n: int, args: tuple, block: int = 256):
    if n > 0:
        g, b = grid(n, block)
        fn(g, b, args)


def host(x) -> np.ndarray:
    """A shape-like parameter (Reshape's shape, Slice's starts, ...) as a host array. The plan keeps
    these on the host when they come from constants or shapes; a device value costs a copy."""
    if x is None:
        return None
    if isinstance(x, cp.ndarray):
        return cp.asnumpy(x)
    return np.asarray(x)


def device(x):
    """x as a CuPy array (host constants the plan did not upload, e.g. a small computed shape)."""
    if x is None or isinstance(x, cp.ndarray):
        return x
    return cp.asarray(x)


def c_contig(x):
    return x if x.flags.c_contiguous else cp.ascontiguousarray(x)


def row_block(n: int) -> int:
    """Threads per block for one-block-per-row kernels: a multiple of 32, at most 1024."""
    b = 32
    while b < n and b < 1024:
        b *= 2
    return b
