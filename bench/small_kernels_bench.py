"""Per-call cost of the runtime's most common small kernels (the fixed cost of a step).

Each case is a one-node model built here, planned by graphopt.Session; the step's kernel (as the
plan calls it: prepared for its constant inputs) is timed directly with timeit, minimum over
repeats, with a fresh copy of each dying input per call (so in-place paths are taken, as in a
plan) and that copy's cost subtracted. The bare NumPy call (the one ufunc/matmul/reduce doing
the work, in place where the kernel may be) on the same operands is timed alongside for
reference, and ONNX Runtime's per-call cost of the same one-node model.

    python bench/small_kernels_bench.py            # all cases
    python bench/small_kernels_bench.py --cases Sigmoid,Gemm --number 20000
"""
from __future__ import annotations

import argparse
import timeit

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def _model(op, inputs, consts, attrs=None, opset=17, out_type=F32):
    """One `op` node over graph inputs `inputs` ({name: array}) and initializers `consts`."""
    names = list(inputs) + list(consts)
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    g = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(v, n) for n, v in consts.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _cases():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 8)).astype(np.float32)
    x6 = r.standard_normal((1, 6)).astype(np.float32)
    c = {}
    for op in ("Tanh", "Relu", "Sigmoid", "Exp", "Neg", "Abs", "Sqrt"):
        xi = np.abs(x) if op == "Sqrt" else x
        uf = {"Relu": np.negative, "Sigmoid": np.exp, "Neg": np.negative}.get(op) or getattr(np, op.lower())
        c[op] = (_model(op, {"x": xi}, {}), {"x": xi}, lambda a, uf=uf: uf(a[0], out=a[0]))
    y = r.standard_normal((2, 8)).astype(np.float32)
    for op, uf in (("Add", np.add), ("Mul", np.multiply), ("Sub", np.subtract), ("Div", np.divide)):
        c[op] = (_model(op, {"x": x, "z": y}, {}), {"x": x, "z": y}, lambda a, uf=uf: uf(a[0], a[1], out=a[0]))
    in_place = lambda uf: lambda a: uf(a[0], a[1], out=a[0])
    row_sum = lambda a: np.add.reduce(a[0], axis=1, keepdims=True)
    c["Mul_const"] = (_model("Mul", {"x": x}, {"k": np.array(0.5, np.float32)}), {"x": x}, in_place(np.multiply))
    c["Add_bias"] = (_model("Add", {"x": x}, {"b": r.standard_normal(8).astype(np.float32)}), {"x": x},
                     in_place(np.add))
    c["ReduceSum_6"] = (_model("ReduceSum", {"x": x6}, {"a": np.array([1], np.int64)}), {"x": x6}, row_sum)
    c["ReduceMean_2x8"] = (_model("ReduceMean", {"x": x}, {}, {"axes": [-1]}, opset=13), {"x": x}, row_sum)
    w = r.standard_normal((6, 6)).astype(np.float32)
    b = r.standard_normal(6).astype(np.float32)
    c["Gemm_1x6_bias"] = (_model("Gemm", {"x": x6}, {"w": w, "b": b}), {"x": x6},
                          lambda a: np.matmul(a[0], a[1]))
    c["Gemm_1x6_transB"] = (_model("Gemm", {"x": x6}, {"w": w, "b": b}, {"transB": 1}), {"x": x6},
                            lambda a: np.matmul(a[0], a[1]))
    w8 = r.standard_normal((8, 8)).astype(np.float32)
    c["MatMul_2x8"] = (_model("MatMul", {"x": x}, {"w": w8}), {"x": x}, lambda a: np.matmul(a[0], a[1]))
    c["Cast_same"] = (_model("Cast", {"x": x}, {}, {"to": F32}), {"x": x}, None)
    c["Cast_f16"] = (_model("Cast", {"x": x}, {}, {"to": TensorProto.FLOAT16}, out_type=TensorProto.FLOAT16),
                     {"x": x}, None)
    c["Expand"] = (_model("Expand", {"x": x6}, {"s": np.array([3, 6], np.int64)}), {"x": x6}, None)
    big = r.standard_normal((64, 56, 56)).astype(np.float32)  # above _inplace.INPLACE_MIN_SIZE: in place
    for op in ("Neg", "Relu"):
        c[f"{op}_200k"] = (_model(op, {"x": big}, {}), {"x": big}, lambda a: np.negative(a[0], out=a[0]))
    c["Add_200k"] = (_model("Add", {"x": big, "z": big}, {}), {"x": big, "z": big},
                     lambda a: np.add(a[0], a[1], out=a[0]))
    c["Unsqueeze"] = (_model("Unsqueeze", {"x": x}, {"a": np.array([0], np.int64)}), {"x": x}, None)
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    import onnxruntime as ort

    from graphopt.runtime.session import Session
    cases = _cases()
    names = args.cases.split(",") if args.cases else list(cases)
    print(f"{'case':<18} {'kernel us':>9} {'bare us':>8} {'ORT us':>7}  kernel")
    for name in names:
        model, feed, bare = cases[name]
        sess = Session(model.SerializeToString())
        fn, ins, _outs, attrs = sess._plan.steps[0][:4]
        plan = sess._plan
        consts = [plan.template[s] for s in ins[len(feed):]]
        vals = list(feed.values())
        def best(stmt, env, n=args.number):
            return min(timeit.repeat(stmt, number=n, repeat=args.repeat, globals=env)) / n * 1e6
        env = {"fn": fn, "at": attrs, "v": vals, "k": consts, "bare": bare}
        # a fresh copy of every input per call, as a plan's dying intermediates are
        copy = best("[*[a.copy() for a in v], *k]", env)
        t = best("fn([*[a.copy() for a in v], *k], at)", env) - copy
        tb = (best("bare([*[a.copy() for a in v], *k])", env) - copy) if bare is not None else float("nan")
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        o = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        to = best("o.run(None, feed)", {"o": o, "feed": feed})
        label = getattr(fn, "__qualname__", type(fn).__name__).replace("<locals>.", "")
        print(f"{name:<18} {t:9.2f} {tb:8.2f} {to:7.2f}  {label}")


if __name__ == "__main__":
    main()
