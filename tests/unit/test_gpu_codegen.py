"""The fused-elementwise code generator (kernels/gpu/codegen.py), without CuPy or a GPU.

Expected values come from ONNX Runtime on the ONNX model of each chain. The IR is checked three
ways: its NumPy rendering (always), and the generated CUDA itself, compiled by nvcc as host code
and run on this CPU (skipped without nvcc)."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphopt.kernels.gpu import codegen
from graphopt.kernels.gpu.cuda_common import PRELUDE

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc") else None)

# (name, input shapes, nodes as (op, inputs, output, attrs))
CHAINS = [
    ("bias_gelu_scale", [(2, 3, 4), (4,), ()],
     [("Add", ["x0", "x1"], "t0", {}), ("Gelu", ["t0"], "t1", {}), ("Mul", ["t1", "x2"], "y", {})]),
    ("norm_tail", [(2, 5, 6), (2, 5, 1), (2, 5, 1), (6,), (6,)],
     [("Sub", ["x0", "x1"], "t0", {}), ("Div", ["t0", "x2"], "t1", {}), ("Mul", ["t1", "x3"], "t2", {}),
      ("Add", ["t2", "x4"], "y", {})]),
    ("activations", [(3, 1, 4), (1, 5, 1)],
     [("Mul", ["x0", "x1"], "t0", {}), ("LeakyRelu", ["t0"], "t1", {"alpha": 0.1}), ("Sigmoid", ["t1"], "t2", {}),
      ("Tanh", ["t2"], "t3", {}), ("HardSigmoid", ["t3"], "t4", {"alpha": 0.3, "beta": 0.4}),
      ("Sub", ["x1", "t4"], "y", {})]),
    ("clip_pow_sqrt", [(4, 6), (4, 1), (), ()],
     [("Abs", ["x0"], "t0", {}), ("Pow", ["t0", "x1"], "t1", {}), ("Clip", ["t1", "x2", "x3"], "t2", {}),
      ("Sqrt", ["t2"], "t3", {}), ("Max", ["t3", "x0"], "y", {})]),
]


def _onnx_model(shapes, nodes, elem=TensorProto.FLOAT):
    inputs = [helper.make_tensor_value_info(f"x{i}", elem, list(s)) for i, s in enumerate(shapes)]
    out = helper.make_tensor_value_info(nodes[-1][2], elem, None)
    onnx_nodes = []
    for op, ins, o, attrs in nodes:
        onnx_nodes.append(helper.make_node(op, ins, [o], **attrs))
    g = helper.make_graph(onnx_nodes, "chain", inputs, [out])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def _program(nodes):
    b = codegen.ProgramBuilder()
    for op, ins, o, attrs in nodes:
        assert b.add(op, ins, attrs, o), op
    return b.build([nodes[-1][2]]), b.input_names


def _feed(shapes, seed):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.uniform(0.2, 2.0, s) * rng.choice([-1, 1], s), dtype=np.float32) for s in shapes]


def _ort(model, arrays):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {f"x{i}": a for i, a in enumerate(arrays)})[0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # sqrt of negatives: NaN on purpose, as in ORT
@pytest.mark.parametrize("name,shapes,nodes", CHAINS, ids=[c[0] for c in CHAINS])
def test_numpy_rendering_matches_onnxruntime(name, shapes, nodes):
    program, names = _program(nodes)
    arrays = _feed(shapes, 1)
    by_name = dict(zip([f"x{i}" for i in range(len(shapes))], arrays))
    got = codegen.numpy_function(program, "float32")(*[by_name[n] for n in names])[0]
    want = _ort(_onnx_model(shapes, nodes), arrays)
    np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=1e-5, atol=1e-6)


def test_source_is_deterministic_and_cached():
    program, _ = _program(CHAINS[0][2])
    chain, out, _ = codegen.specialize(program, [(2, 3, 4), (4,), ()], "float32")
    same, _, _ = codegen.specialize(program, [(7, 9, 4), (4,), ()], "float32")  # other sizes, same pattern
    assert chain == same and out == (2, 3, 4)
    before = dict(codegen.stats)
    name, src = codegen.cuda_source(chain)
    name2, src2 = codegen.cuda_source(same)
    assert (name, src) == (name2, src2)
    assert codegen.stats["hits"] >= before["hits"] + 1
    # a fresh generator run (cache cleared) reproduces the text exactly
    codegen._SOURCES.clear()
    assert codegen.cuda_source(chain) == (name, src)
    other, _, _ = codegen.specialize(program, [(2, 3, 4), (3, 1), ()], "float32")
    half, _, _ = codegen.specialize(program, [(2, 3, 4), (4,), ()], "float16")
    assert len({codegen.kernel_name(c) for c in (chain, other, half)}) == 3


@pytest.mark.parametrize("shapes", [
    [(2, 3, 4), (4,)], [(2, 3, 4), (3, 1)], [(5, 1, 7), (1, 6, 1), (7,)], [(1,), (3, 2)],
    [(2, 1, 3, 1, 4), (2, 5, 3, 6, 4), (5, 1, 1, 4)], [(), (4, 4)], [(3, 4), (3, 4)],
])
def test_broadcast_layout_addresses_every_element_like_numpy(shapes):
    out, patterns, dims, strides = codegen.broadcast_layout(shapes)
    assert out == np.broadcast_shapes(*shapes)
    total = int(np.prod(out))
    for shape, pat, st in zip(shapes, patterns, strides):
        want = np.broadcast_to(np.arange(int(np.prod(shape))).reshape(shape), out).reshape(-1)
        if pat == "full":
            got = np.arange(total)
        elif pat == "scalar":
            got = np.zeros(total, np.int64)
        else:
            coords = np.array(list(itertools.product(*[range(d) for d in dims])))
            got = coords @ np.array(st)
        np.testing.assert_array_equal(got, want)


def test_unfusable_ops_are_refused():
    b = codegen.ProgramBuilder()
    assert not b.add("MatMul", ["a", "b"], {}, "c")
    assert not b.add("Clip", ["a", "", "hi"], {}, "c")  # an absent bound is not an input
    assert not b.add("Add", ["a"], {}, "c")  # wrong arity
    assert not b.ops


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_generated_cuda_runs_as_host_code_and_matches_onnxruntime(tmp_path):
    """The generated element functions are __host__ __device__: compile every chain into one host
    program with nvcc, run it on the CPU, compare with ONNX Runtime."""
    parts, mains, expected = [PRELUDE], [], []
    for k, (name, shapes, nodes) in enumerate(CHAINS):
        program, names = _program(nodes)
        arrays = _feed(shapes, 10 + k)
        by_name = dict(zip([f"x{i}" for i in range(len(shapes))], arrays))
        ordered = [by_name[n] for n in names]
        chain, out, size_args = codegen.specialize(program, [a.shape for a in ordered], "float32")
        kname, src = codegen.cuda_source(chain)
        parts.append(src[len(PRELUDE):])
        n = int(np.prod(out))
        decl = []
        for i, a in enumerate(ordered):
            vals = ", ".join(f"{v!r}f" for v in a.reshape(-1).astype(float).tolist())
            decl.append(f"    static const float c{k}_{i}[] = {{{vals}}};")
        decl.append(f"    static float o{k}[{n}];")
        args = ", ".join([f"c{k}_{i}" for i in range(len(ordered))] + [f"o{k}"] + [f"{v}LL" for v in size_args[1:]])
        mains.append("\n".join(decl) + f"\n    for (long long i = 0; i < {n}; ++i) {kname}_element(i, {args});\n"
                     f'    for (long long i = 0; i < {n}; ++i) printf("%.9g\\n", o{k}[i]);')
        expected.append(_ort(_onnx_model(shapes, nodes), arrays).reshape(-1))
    src = "#include <cstdio>\n" + "\n".join(parts) + "\nint main() {\n" + "\n".join(mains) + "\n    return 0;\n}\n"
    (tmp_path / "chains.cu").write_text(src)
    exe = tmp_path / "chains"
    subprocess.run([NVCC, "-arch=sm_90", "-o", str(exe), str(tmp_path / "chains.cu")], check=True,
                   capture_output=True, timeout=120)
    got = np.array(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split(), float)
    want = np.concatenate(expected)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # values beyond float16's range overflow on purpose
def test_half_conversion_of_the_host_prelude_round_trips(tmp_path):
    """go_f2h/go_h2f on the host must agree with NumPy's float16 (round to nearest even)."""
    if NVCC is None:
        pytest.skip("nvcc not found")
    vals = np.array([0.0, -0.0, 1.0, 65504.0, 65520.0, 1e-8, 6.1e-5, 5.96e-8, 3.0e-8, 0.1, -2.5, 1 / 3, 1e5,
                     np.inf, -np.inf, 2049.0, 2051.0, 4.5e-6], np.float32)
    body = ", ".join(f"{v!r}f" if np.isfinite(v) else ("INFINITY" if v > 0 else "-INFINITY")
                     for v in vals.astype(float).tolist())
    src = ("#include <cstdio>\n#include <cmath>\n" + PRELUDE +
           f"int main() {{ const float v[] = {{{body}}};\n"
           f"  for (int i = 0; i < {len(vals)}; ++i) printf(\"%u %.9g\\n\", (unsigned)go_f2h(v[i]), go_h2f(go_f2h(v[i])));\n"
           "  return 0; }\n")
    (tmp_path / "half.cu").write_text(src)
    subprocess.run([NVCC, "-arch=sm_90", "-o", str(tmp_path / "half"), str(tmp_path / "half.cu")], check=True,
                   capture_output=True, timeout=120)
    lines = subprocess.run([str(tmp_path / "half")], check=True, capture_output=True, text=True).stdout.split("\n")
    bits = np.array([int(ln.split()[0]) for ln in lines if ln], np.uint16)
    np.testing.assert_array_equal(bits, vals.astype(np.float16).view(np.uint16))
    back = np.array([float(ln.split()[1]) for ln in lines if ln], np.float32)
    np.testing.assert_array_equal(back, vals.astype(np.float16).astype(np.float32))
