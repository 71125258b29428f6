"""Fused elementwise chains -> one generated CUDA kernel (pure Python: no CuPy needed here).

A chain of elementwise/broadcast ops is lowered to a small IR, `Program`: input slots, a list of
`(op, args, attrs)` where args index earlier values (inputs first, then op results), and the values
it writes out. `specialize` fixes the element type and the broadcast pattern of a concrete call:
dims are coalesced (adjacent dims where every input broadcasts the same way merge) and each input
becomes "full" (same shape: index i), "scalar" (one element: index 0) or strided (stride 0 on
broadcast dims). The resulting `Chain` is the cache key: op sequence, dtypes, broadcast pattern,
never the sizes, which travel as kernel arguments. `cuda_source(chain)` is deterministic and cached.

The per-element work is a `__host__ __device__` function so the generated code can also be compiled
and run as host code (tests do that with nvcc and compare with ONNX Runtime), and `numpy_source`
emits the same IR as a NumPy function, which checks the lowering without any compiler.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .cuda_common import PRELUDE

# op -> (C expression over {0}, {1}.. and {attr}; `$f(` is the float/double math function f;
#        NumPy expression in the same placeholders)
OPS = {
    "Add": ("({0} + {1})", "({0} + {1})"),
    "Sub": ("({0} - {1})", "({0} - {1})"),
    "Mul": ("({0} * {1})", "({0} * {1})"),
    "Div": ("({0} / {1})", "({0} / {1})"),
    "Pow": ("$pow({0}, {1})", "np.power({0}, {1})"),
    # Max/Min/Relu propagate NaN like ONNX Runtime and np.maximum (fmaxf would drop it)
    "Max": ("(({0} != {0} || {0} > {1}) ? {0} : {1})", "np.maximum({0}, {1})"),
    "Min": ("(({0} != {0} || {0} < {1}) ? {0} : {1})", "np.minimum({0}, {1})"),
    "Neg": ("(-{0})", "(-{0})"),
    "Abs": ("$fabs({0})", "np.abs({0})"),
    "Relu": ("(({0} != {0} || {0} > (C)0) ? {0} : (C)0)", "np.maximum({0}, 0)"),
    "Sigmoid": ("((C)1 / ((C)1 + $exp(-{0})))", "(1 / (1 + np.exp(-{0})))"),
    "Tanh": ("$tanh({0})", "np.tanh({0})"),
    "Exp": ("$exp({0})", "np.exp({0})"),
    "Log": ("$log({0})", "np.log({0})"),
    "Sqrt": ("$sqrt({0})", "np.sqrt({0})"),
    "Reciprocal": ("((C)1 / {0})", "(1 / {0})"),
    "Erf": ("$erf({0})", "_erf({0})"),
    "Floor": ("$floor({0})", "np.floor({0})"),
    "Ceil": ("$ceil({0})", "np.ceil({0})"),
    "Sin": ("$sin({0})", "np.sin({0})"),
    "Cos": ("$cos({0})", "np.cos({0})"),
    "Softplus": ("$log($exp({0}) + (C)1)", "np.log(np.exp({0}) + 1)"),
    "Identity": ("{0}", "{0}"),
    "LeakyRelu": ("({0} >= (C)0 ? {0} : (C){alpha} * {0})", "np.where({0} >= 0, {0}, {alpha} * {0})"),
    "Elu": ("({0} > (C)0 ? {0} : (C){alpha} * ($exp({0}) - (C)1))", "np.where({0} > 0, {0}, {alpha} * (np.exp({0}) - 1))"),
    "HardSigmoid": ("$fmax((C)0, $fmin((C)1, (C){alpha} * {0} + (C){beta}))",
                    "np.clip({alpha} * {0} + {beta}, 0, 1)"),
    "GeluErf": ("((C)0.5 * {0} * ((C)1 + $erf({0} * (C)0.7071067811865476)))",
                "(0.5 * {0} * (1 + _erf({0} * 0.7071067811865476)))"),
    "GeluTanh": ("((C)0.5 * {0} * ((C)1 + $tanh((C)0.7978845608028654 * ({0} + (C)0.044715 * {0} * {0} * {0}))))",
                 "(0.5 * {0} * (1 + np.tanh(0.7978845608028654 * ({0} + 0.044715 * {0} * {0} * {0}))))"),
}
_ARITY = {op: 2 if "{1}" in c else 1 for op, (c, _) in OPS.items()}
_ATTRS = {"LeakyRelu": {"alpha": 0.01}, "Elu": {"alpha": 1.0}, "HardSigmoid": {"alpha": 0.2, "beta": 0.5}}
FLOAT_TYPES = {"float16": "go_half", "float32": "float", "float64": "double"}


@dataclass(frozen=True)
class Program:
    """The op structure of a chain, known at plan time: n_inputs values come in, ops compute more."""
    n_inputs: int
    ops: tuple  # ((op, (arg value ids...), ((attr, value), ...)), ...)
    outputs: tuple  # value ids written out


class ProgramBuilder:
    """Lower ONNX nodes (op type, input names, resolved attrs, output name) into a Program."""

    def __init__(self):
        self.input_names: list[str] = []
        self.ops: list = []
        self.values: dict[str, int] = {}

    def _value(self, name: str) -> int:
        if name not in self.values:
            self.input_names.append(name)
            self.values[name] = -len(self.input_names)  # inputs renumbered in build()
        return self.values[name]

    def _emit(self, op, args, attrs=()):
        self.ops.append((op, tuple(args), tuple(attrs)))
        return len(self.ops) - 1  # op results are numbered >= 0 until build()

    def add(self, op: str, inputs: list[str], attrs: dict, output: str) -> bool:
        """Append one node; False (and nothing appended) when the op cannot be fused."""
        steps = lower(op, len(inputs), attrs)
        if steps is None or any(not n for n in inputs):
            return False
        ids = [self._value(n) for n in inputs]
        local: list[int] = []
        for sop, refs, sattrs in steps:  # refs: ("in", k) node input k, ("tmp", j) earlier step j
            local.append(self._emit(sop, [ids[k] if kind == "in" else ("op", local[k]) for kind, k in refs], sattrs))
        self.values[output] = ("op", local[-1])
        return True

    def build(self, outputs: list[str]) -> Program:
        n = len(self.input_names)

        def vid(ref):
            if isinstance(ref, tuple):
                return n + ref[1]
            return -ref - 1  # input slot
        ops = tuple((op, tuple(vid(a) for a in args), attrs) for op, args, attrs in self.ops)
        return Program(n, ops, tuple(vid(self.values[o]) for o in outputs))


def lower(op: str, n_inputs: int, attrs: dict):
    """ONNX op -> IR steps, or None when it is not a fusable elementwise op."""
    if op == "Gelu":
        name = "GeluTanh" if attrs.get("approximate") == "tanh" else "GeluErf"
        return [(name, (("in", 0),), ())] if n_inputs == 1 else None
    if op == "Clip":  # Clip(x, min?, max?) opset >= 11; absent bounds are "" and rejected by add()
        if n_inputs == 1:
            return [("Identity", (("in", 0),), ())]
        steps = [("Max", (("in", 0), ("in", 1)), ())]
        if n_inputs == 3:
            steps.append(("Min", (("tmp", 0), ("in", 2)), ()))
        return steps
    if op in ("Max", "Min", "Sum") and n_inputs >= 2:  # variadic: fold left
        base = "Add" if op == "Sum" else op
        steps = [(base, (("in", 0), ("in", 1)), ())]
        for k in range(2, n_inputs):
            steps.append((base, (("tmp", len(steps) - 1), ("in", k)), ()))
        return steps
    if op not in OPS or op.startswith("Gelu") or _ARITY[op] != n_inputs:
        return None
    names = _ATTRS.get(op, {})
    values = tuple((k, float(attrs[k] if attrs.get(k) is not None else d)) for k, d in names.items())
    if any(not math.isfinite(v) for _, v in values):
        return None
    return [(op, tuple(("in", k) for k in range(n_inputs)), values)]


@dataclass(frozen=True)
class Chain:
    """The cache key: a Program specialized to an element type and a broadcast pattern."""
    program: Program
    dtype: str  # numpy name of every input and output: float16 / float32 / float64
    patterns: tuple  # per input: "full", "scalar" or a string over the coalesced dims, k kept / b broadcast
    ndim: int  # coalesced output rank (only used by strided inputs)


def broadcast_layout(shapes: list[tuple]) -> tuple[tuple, list[str], list[int], list[list[int]]]:
    """(output shape, per-input pattern, coalesced dims, per-input element strides over those dims)."""
    out = tuple(np.broadcast_shapes(*shapes)) if shapes else ()
    nd = len(out)
    padded = [(1,) * (nd - len(s)) + tuple(s) for s in shapes]
    kept = [[s[a] == out[a] and out[a] != 1 for a in range(nd)] for s in padded]
    dims: list[int] = []
    flags: list[list[bool]] = []  # per coalesced dim: which inputs keep it
    for a in range(nd):
        if out[a] == 1:
            continue
        col = [k[a] for k in kept]
        if flags and flags[-1] == col:
            dims[-1] *= out[a]  # contiguous inputs: merging adjacent dims with one pattern is exact
        else:
            dims.append(out[a])
            flags.append(col)
    patterns, strides = [], []
    for i in range(len(shapes)):
        keep = [f[i] for f in flags]
        if all(keep):
            patterns.append("full")
            strides.append([])
        elif not any(keep):
            patterns.append("scalar")
            strides.append([])
        else:
            patterns.append("".join("k" if k else "b" for k in keep))
            st, acc = [], 1
            for d, k in zip(reversed(dims), reversed(keep)):
                st.append(acc if k else 0)
                acc *= d if k else 1
            strides.append(st[::-1])
    return out, patterns, dims, strides


def specialize(program: Program, shapes: list[tuple], dtype: str) -> tuple[Chain, tuple, list]:
    """The Chain for inputs of these shapes, the output shape, and the size arguments to launch with."""
    out, patterns, dims, strides = broadcast_layout(shapes)
    strided = any(p not in ("full", "scalar") for p in patterns)
    chain = Chain(program, str(np.dtype(dtype)), tuple(patterns), len(dims) if strided else 0)
    size_args = [int(np.prod(out, dtype=np.int64))]
    if strided:
        size_args += dims
        for p, st in zip(patterns, strides):
            if p not in ("full", "scalar"):
                size_args += [s for s, c in zip(st, p) if c == "k"]
    return chain, out, size_args


def kernel_name(chain: Chain) -> str:
    return "go_fused_" + hashlib.sha1(repr(chain).encode()).hexdigest()[:16]


def _c_expr(op: str, args: list[str], attrs: tuple, ctype: str) -> str:
    text = OPS[op][0].format(*args, **{k: repr(v) for k, v in attrs})
    suffix = "f" if ctype == "float" else ""
    for fn in ("pow", "fmax", "fmin", "fabs", "exp", "tanh", "log", "sqrt", "erf", "floor", "ceil", "sin", "cos"):
        text = text.replace(f"${fn}(", f"{fn}{suffix}(")
    return text.replace("(C)", f"({ctype})")


_SOURCES: dict[Chain, tuple[str, str]] = {}
stats = {"hits": 0, "misses": 0}


def cuda_source(chain: Chain) -> tuple[str, str]:
    """(kernel name, CUDA source) for the chain, generated once per signature."""
    cached = _SOURCES.get(chain)
    if cached is not None:
        stats["hits"] += 1
        return cached
    stats["misses"] += 1
    name = kernel_name(chain)
    _SOURCES[chain] = (name, PRELUDE + _generate(chain, name))
    return _SOURCES[chain]


def _generate(chain: Chain, name: str) -> str:
    p = chain.program
    t = FLOAT_TYPES[chain.dtype]
    ctype = "double" if chain.dtype == "float64" else "float"
    params = [f"const {t}* __restrict__ in{i}" for i in range(p.n_inputs)]
    params += [f"{t}* __restrict__ out{j}" for j in range(len(p.outputs))]
    params.append("long long n")
    if chain.ndim:
        params += [f"long long d{a}" for a in range(chain.ndim)]
    for i, pat in enumerate(chain.patterns):
        if pat not in ("full", "scalar"):
            params += [f"long long s{i}_{a}" for a, c in enumerate(pat) if c == "k"]
    body = []
    if chain.ndim:  # coordinates of element i over the coalesced output dims that some input reads
        used = {a for pat in chain.patterns if pat not in ("full", "scalar") for a, c in enumerate(pat) if c == "k"}
        body.append("    long long r = i;")
        for a in reversed(range(min(used), chain.ndim)):
            body.append(f"    long long c{a} = r % d{a}; r /= d{a};" if a in used else f"    r /= d{a};")
    for i, pat in enumerate(chain.patterns):
        if pat == "full":
            index = "i"
        elif pat == "scalar":
            index = "0"
        else:
            index = " + ".join(f"c{a} * s{i}_{a}" for a, c in enumerate(pat) if c == "k")
        body.append(f"    {ctype} v{i} = ({ctype})go_load(in{i}, {index});")
    for k, (op, args, attrs) in enumerate(p.ops):
        expr = _c_expr(op, [f"v{a}" for a in args], attrs, ctype)
        body.append(f"    {ctype} v{p.n_inputs + k} = {expr};  /* {op} */")
    for j, v in enumerate(p.outputs):
        body.append(f"    go_store(out{j}, i, v{v});")
    sig = ", ".join(params)
    call = ", ".join(["i"] + [q.split()[-1] for q in params if q != "long long n"])
    return (f"\n__host__ __device__ __forceinline__ void {name}_element(long long i, "
            f"{', '.join(q for q in params if q != 'long long n')}) {{\n" + "\n".join(body) + "\n}\n"
            f'extern "C" __global__ void {name}({sig}) {{\n'
            f"    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; "
            f"i += (long long)gridDim.x * blockDim.x)\n"
            f"        {name}_element({call});\n}}\n")


def numpy_source(program: Program, dtype: str) -> str:
    """The same IR as a Python function `fused(in0, ...) -> tuple` over NumPy arrays."""
    lines = [f"def fused({', '.join(f'in{i}' for i in range(program.n_inputs))}):"]
    for i in range(program.n_inputs):
        lines.append(f"    v{i} = np.asarray(in{i}, dtype=np.{dtype})")
    for k, (op, args, attrs) in enumerate(program.ops):
        expr = OPS[op][1].format(*[f"v{a}" for a in args], **{a: repr(v) for a, v in attrs})
        lines.append(f"    v{program.n_inputs + k} = np.asarray({expr}, dtype=np.{dtype})")
    lines.append(f"    return ({''.join(f'v{v}, ' for v in program.outputs)})")
    return "\n".join(lines) + "\n"


def numpy_function(program: Program, dtype: str):
    scope = {"np": np, "_erf": np.vectorize(math.erf, otypes=[np.float64])}
    exec(compile(numpy_source(program, dtype), "<fused>", "exec"), scope)  # our own generated text
    return scope["fused"]
