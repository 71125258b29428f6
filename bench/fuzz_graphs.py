"""Random valid ONNX graphs for the differential fuzzer (bench/fuzz.py), valid by construction.

The generator keeps a pool of float tensors whose shapes it tracks itself (dim 0 may be the
symbolic batch "N"); every op template takes operands from the pool and appends a tensor of a known
shape, so the graph type-checks without shape inference. Values stay finite: weights are scaled by
1/sqrt(fan-in), denominators are |y| + 1, Exp/Log/Sqrt only see bounded or positive inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # Reduce* take axes as an input, Split takes num_outputs; ORT runs it everywhere
N = "N"  # the symbolic batch dim (fed as 2 or 3)


class Builder:
    def __init__(self, rng: np.random.Generator, symbolic: bool):
        self.rng, self.symbolic = rng, symbolic
        self.nodes, self.inits, self.inputs = [], [], []
        self.pool: list[tuple[str, list]] = []  # (name, shape); shape entries int or N
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, value: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape, fan_in: int) -> str:
        w = (self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)
        return self.const(w, "w")

    def node(self, op: str, inputs, n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name(op.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name("n_" + op), **attrs))
        return outs

    def add(self, name: str, shape) -> str:
        self.pool.append((name, list(shape)))
        return name

    def pick(self, rank=None, min_rank=1):
        choices = [(n, s) for n, s in self.pool if (rank is None and len(s) >= min_rank) or len(s) == rank]
        return None if not choices else choices[self.rng.integers(len(choices))]

    def graph_input(self, shape) -> str:
        name = self.name("in")
        dims = [N if (i == 0 and self.symbolic) else d for i, d in enumerate(shape)]
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        return self.add(name, dims)


def numeric(shape) -> list[int]:
    """The shape used to size constants: the batch dim counts as 1 (constants broadcast over it)."""
    return [1 if d == N else d for d in shape]


def bcast_const(b: Builder, shape) -> str:
    """A constant that broadcasts to `shape`: a random suffix of its dims, some set to 1."""
    k = int(b.rng.integers(0, len(shape) + 1))
    dims = [1 if (d == N or b.rng.random() < 0.3) else d for d in shape[len(shape) - k:]]
    return b.const(b.rng.uniform(-1, 1, dims).astype(np.float32))


# ---------------------------------------------------------------- op templates: each returns True if it added something

def unary(b):
    x, s = b.pick()
    op = b.rng.choice(["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Erf", "Identity", "LeakyRelu", "Softsign", "Clip"])
    if op == "Clip":
        y = b.node("Clip", [x, b.const(np.float32(-0.5)), b.const(np.float32(0.7))])[0]
    else:
        y = b.node(op, [x])[0]
    b.add(y, s)
    return True


def bounded_math(b):
    x, s = b.pick()
    kind = b.rng.integers(3)
    if kind == 0:  # exp(tanh(x))
        y = b.node("Exp", b.node("Tanh", [x]))[0]
    elif kind == 1:  # log(|x| + 1)
        y = b.node("Log", b.node("Add", [b.node("Abs", [x])[0], b.const(np.float32(1))]))[0]
    else:  # sqrt(|x|) * 0.5
        y = b.node("Mul", [b.node("Sqrt", b.node("Abs", [x]))[0], b.const(np.float32(0.5))])[0]
    b.add(y, s)
    return True


def binary(b):
    x, s = b.pick()
    same = [(n, t) for n, t in b.pool if t == s and n != x]
    other = same[b.rng.integers(len(same))][0] if same and b.rng.random() < 0.5 else bcast_const(b, s)
    op = b.rng.choice(["Add", "Sub", "Mul", "Div", "Max", "Min"])
    if op == "Div":
        other = b.node("Add", [b.node("Abs", [other])[0], b.const(np.float32(1))])[0]
    args = [x, other] if b.rng.random() < 0.7 else [other, x]
    b.add(b.node(op, args)[0], s)
    return True


def matmul(b):
    x, s = b.pick(min_rank=2)
    k, m = s[-1], int(b.rng.choice([3, 4, 8]))
    y = b.node("MatMul", [x, b.weight([k, m], k)])[0]
    if b.rng.random() < 0.5:
        y = b.node("Add", [y, b.const(b.rng.uniform(-1, 1, [m]).astype(np.float32))])[0]
    b.add(y, s[:-1] + [m])
    return True


def gemm(b):
    got = b.pick(rank=2)
    if got is None:
        return False
    x, s = got
    k, m = s[1], int(b.rng.choice([3, 5, 8]))
    trans_b = int(b.rng.integers(2))
    w = b.weight([m, k] if trans_b else [k, m], k)
    inputs = [x, w] + ([b.const(b.rng.uniform(-1, 1, [m]).astype(np.float32))] if b.rng.random() < 0.7 else [])
    y = b.node("Gemm", inputs, transB=trans_b, alpha=float(b.rng.choice([1.0, 0.5])), beta=float(b.rng.choice([1.0, 2.0])))[0]
    b.add(y, [s[0], m])
    return True


def conv(b):
    got = b.pick(rank=4)
    if got is None:
        return False
    x, s = got
    c, h, w = s[1], s[2], s[3]
    k = int(b.rng.choice([1, 3])) if min(h, w) >= 3 else 1
    group = c if (c > 1 and b.rng.random() < 0.2) else 1
    m = c if group > 1 else int(b.rng.choice([2, 4, 6]))
    pad = int(b.rng.integers(0, 2)) if k == 3 else 0
    stride = int(b.rng.choice([1, 2])) if min(h, w) >= 4 else 1
    inputs = [x, b.weight([m, c // group, k, k], c // group * k * k)]
    if b.rng.random() < 0.7:
        inputs.append(b.const(b.rng.uniform(-0.5, 0.5, [m]).astype(np.float32)))
    y = b.node("Conv", inputs, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=group)[0]
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    b.add(y, [s[0], m, oh, ow])
    return True


def batchnorm(b):
    got = b.pick(rank=4)
    if got is None:
        return False
    x, s = got
    c = s[1]
    params = [b.const(b.rng.uniform(0.5, 1.5, [c]).astype(np.float32)), b.const(b.rng.uniform(-0.5, 0.5, [c]).astype(np.float32)),
              b.const(b.rng.uniform(-0.5, 0.5, [c]).astype(np.float32)), b.const(b.rng.uniform(0.5, 2, [c]).astype(np.float32))]
    b.add(b.node("BatchNormalization", [x] + params, epsilon=1e-5)[0], s)
    return True


def reduce(b):
    x, s = b.pick()
    axis = int(b.rng.integers(1 if len(s) > 1 else 0, len(s)))
    keep = int(b.rng.integers(2))
    op = b.rng.choice(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"])
    y = b.node(op, [x, b.const(np.array([axis], np.int64))], keepdims=keep)[0]
    b.add(y, s[:axis] + ([1] if keep else []) + s[axis + 1:])
    return True


def reshape(b):
    x, s = b.pick(min_rank=2)
    rest = s[1:]
    if b.rng.random() < 0.5 or len(rest) == 1:  # flatten the non-batch dims
        shape, out = [0, -1], [s[0], int(np.prod(rest))]
    else:  # merge the last two dims
        shape, out = [0] * (len(s) - 2) + [-1], s[:-2] + [s[-2] * s[-1]]
    if b.rng.random() < 0.3:  # computed shape: Concat(Shape(x)[:1], [-1]) for flattening
        head = b.node("Shape", [x], start=0, end=1)[0]
        target = b.node("Concat", [head, b.const(np.array([-1], np.int64))], axis=0)[0]
        out = [s[0], int(np.prod(rest))]
    else:
        target = b.const(np.array(shape, np.int64))
    b.add(b.node("Reshape", [x, target])[0], out)
    return True


def transpose(b):
    x, s = b.pick(min_rank=2)
    perm = [0] + list(1 + b.rng.permutation(len(s) - 1))
    if not b.symbolic and b.rng.random() < 0.3:  # the symbolic batch dim stays first
        perm = list(b.rng.permutation(len(s)))
    b.add(b.node("Transpose", [x], perm=[int(p) for p in perm])[0], [s[p] for p in perm])
    return True


def concat(b):
    x, s = b.pick(min_rank=2)
    axis = int(b.rng.integers(1, len(s)))
    same = [n for n, t in b.pool if t == s]
    other = same[b.rng.integers(len(same))] if len(same) > 1 else b.node("Neg", [x])[0]
    b.add(b.node("Concat", [x, other], axis=axis)[0], s[:axis] + [2 * s[axis]] + s[axis + 1:])
    return True


def split(b):
    x, s = b.pick(min_rank=2)
    axes = [a for a in range(1, len(s)) if s[a] % 2 == 0]
    if not axes:
        return False
    axis = int(b.rng.choice(axes))
    part = s[:axis] + [s[axis] // 2] + s[axis + 1:]
    ys = b.node("Split", [x], n_out=2, axis=axis, num_outputs=2)
    for y in ys:
        b.add(y, part)
    return True


def slice_(b):
    x, s = b.pick(min_rank=2)
    axis = int(b.rng.integers(1, len(s)))
    d = s[axis]
    if d < 2:
        return False
    start = int(b.rng.integers(0, d - 1))
    end = int(b.rng.integers(start + 1, d + 1))
    step = 1
    args = [x, b.const(np.array([start], np.int64)), b.const(np.array([end], np.int64)), b.const(np.array([axis], np.int64))]
    b.add(b.node("Slice", args)[0], s[:axis] + [len(range(start, end, step))] + s[axis + 1:])
    return True


def gather(b):
    x, s = b.pick(min_rank=2)
    axis = int(b.rng.integers(1, len(s)))
    if b.rng.random() < 0.3:  # a scalar index drops the axis (and its bytes equal a [1] index's)
        idx = np.array(b.rng.integers(0, s[axis]), np.int64)
        b.add(b.node("Gather", [x, b.const(idx)], axis=axis)[0], s[:axis] + s[axis + 1:])
        return True
    idx = b.rng.integers(-s[axis], s[axis], int(b.rng.integers(1, 4))).astype(np.int64)
    b.add(b.node("Gather", [x, b.const(idx)], axis=axis)[0], s[:axis] + [len(idx)] + s[axis + 1:])
    return True


def softmax(b):
    x, s = b.pick()
    axis = int(b.rng.integers(-len(s), len(s)))
    b.add(b.node(b.rng.choice(["Softmax", "LogSoftmax"]), [x], axis=axis)[0], s)
    return True


def layernorm(b):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add: the exported-from-PyTorch pattern."""
    x, s = b.pick(min_rank=2)
    d = s[-1]
    ax = b.const(np.array([-1], np.int64))
    mean = b.node("ReduceMean", [x, ax], keepdims=1)[0]
    diff = b.node("Sub", [x, mean])[0]
    sq = b.node("Pow", [diff, b.const(np.float32(2))])[0] if b.rng.random() < 0.5 else b.node("Mul", [diff, diff])[0]
    var = b.node("ReduceMean", [sq, ax], keepdims=1)[0]
    std = b.node("Sqrt", b.node("Add", [var, b.const(np.float32(1e-5))]))[0]
    y = b.node("Div", [diff, std])[0]
    y = b.node("Mul", [y, b.const(b.rng.uniform(0.5, 1.5, [d]).astype(np.float32))])[0]
    y = b.node("Add", [y, b.const(b.rng.uniform(-0.5, 0.5, [d]).astype(np.float32))])[0]
    b.add(y, s)
    return True


def gelu(b):
    x, s = b.pick()
    if b.rng.random() < 0.5:  # x * 0.5 * (1 + erf(x / sqrt(2)))
        e = b.node("Erf", b.node("Div", [x, b.const(np.float32(np.sqrt(2)))]))[0]
        y = b.node("Mul", [b.node("Mul", [x, b.node("Add", [e, b.const(np.float32(1))])[0]])[0], b.const(np.float32(0.5))])[0]
    else:  # tanh approximation
        cube = b.node("Pow", [x, b.const(np.float32(3))])[0]
        inner = b.node("Mul", [b.node("Add", [x, b.node("Mul", [cube, b.const(np.float32(0.044715))])[0]])[0],
                               b.const(np.float32(np.sqrt(2 / np.pi)))])[0]
        y = b.node("Mul", [b.node("Mul", [b.const(np.float32(0.5)), x])[0],
                           b.node("Add", [b.const(np.float32(1)), b.node("Tanh", [inner])[0]])[0]])[0]
    b.add(y, s)
    return True


def attention(b):
    """softmax(Q K^T / sqrt(d)) V on a [N, S, D] tensor, optionally split into heads."""
    got = b.pick(rank=3)
    if got is None:
        return False
    x, s = got
    seq, dm = s[1], s[2]
    heads = 2 if dm % 2 == 0 and b.rng.random() < 0.5 else 1
    q, k, v = (b.node("MatMul", [x, b.weight([dm, dm], dm)])[0] for _ in range(3))
    if heads > 1:
        split_heads = b.const(np.array([0, seq, heads, dm // heads], np.int64))
        q, k, v = (b.node("Transpose", b.node("Reshape", [t, split_heads]), perm=[0, 2, 1, 3])[0] for t in (q, k, v))
        kt = b.node("Transpose", [k], perm=[0, 1, 3, 2])[0]
    else:
        kt = b.node("Transpose", [k], perm=[0, 2, 1])[0]
    scores = b.node("Div", [b.node("MatMul", [q, kt])[0], b.const(np.float32(np.sqrt(dm // heads)))])[0]
    y = b.node("MatMul", [b.node("Softmax", [scores], axis=-1)[0], v])[0]
    if heads > 1:
        y = b.node("Reshape", [b.node("Transpose", [y], perm=[0, 2, 1, 3])[0], b.const(np.array([0, seq, dm], np.int64))])[0]
    b.add(y, s)
    return True


def pool(b):
    got = b.pick(rank=4)
    if got is None:
        return False
    x, s = got
    kind = b.rng.integers(3)
    if kind == 2 or min(s[2], s[3]) < 2:
        b.add(b.node(b.rng.choice(["GlobalAveragePool", "GlobalMaxPool"]), [x])[0], s[:2] + [1, 1])
        return True
    op = "MaxPool" if kind == 0 else "AveragePool"
    b.add(b.node(op, [x], kernel_shape=[2, 2], strides=[2, 2])[0], s[:2] + [s[2] // 2, s[3] // 2])
    return True


def resize(b):
    got = b.pick(rank=4)
    if got is None or max(got[1][2], got[1][3]) > 8:
        return False
    x, s = got
    mode = str(b.rng.choice(["nearest", "linear"]))
    scales = b.const(np.array([1, 1, 2, 2], np.float32))
    y = b.node("Resize", [x, "", scales], mode=mode)[0]
    b.add(y, s[:2] + [s[2] * 2, s[3] * 2])
    return True


def cast(b):
    x, s = b.pick()
    y = b.node("Cast", b.node("Cast", [x], to=TensorProto.DOUBLE), to=TensorProto.FLOAT)[0]
    b.add(y, s)
    return True


def where(b):
    x, s = b.pick()
    cond = b.node("Greater", [x, b.const(np.float32(b.rng.uniform(-0.5, 0.5)))])[0]
    b.add(b.node("Where", [cond, x, bcast_const(b, s)])[0], s)
    return True


def constant_chain(b):
    """Work folding should do: an expression of constants only, plus a no-op and a duplicate."""
    x, s = b.pick()
    c = bcast_const(b, s)
    c2 = b.node("Mul", [b.node("Add", [c, b.const(np.float32(1))])[0], b.const(np.float32(0.5))])[0]
    y = b.node("Add", [x, c2])[0]
    y = b.node(str(b.rng.choice(["Identity", "Dropout"])), [y])[0]
    twin = b.node("Add", [x, c2])[0]  # a common subexpression
    b.add(b.node("Sub", [y, twin])[0] if b.rng.random() < 0.3 else b.node("Mul", [y, twin])[0], s)
    return True


def if_branch(b):
    """If(ReduceSum(x) > 0) then f(x) else g(x), branches reading the outer x."""
    x, s = b.pick()
    if x.startswith("cast_"):  # ORT (optimizations off) loses a Cast->Cast result read only by subgraphs
        x = b.node("Identity", [x])[0]
    total = b.node("ReduceSum", [x], keepdims=0)[0]
    # a threshold away from 0: sums like ReduceSum(Concat(x, -x)) are 0 up to rounding, and a
    # condition decided by rounding noise is not a miscompile
    threshold = np.float32(b.rng.uniform(0.3, 0.7) * b.rng.choice([-1, 1]))
    cond = b.node("Greater", [total, b.const(threshold)])[0]
    shape = list(s)
    branches = []
    for op in b.rng.choice(["Relu", "Neg", "Tanh", "Sigmoid"], 2, replace=False):
        out = b.name("branch_out")
        body_node = helper.make_node(str(op), [x], [out], name=b.name("n_" + str(op)))
        vi = helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)
        branches.append(helper.make_graph([body_node], b.name("branch"), [], [vi]))
    y = b.node("If", [cond], then_branch=branches[0], else_branch=branches[1])[0]
    b.add(y, s)
    return True


TEMPLATES = [unary, bounded_math, binary, binary, matmul, gemm, conv, conv, batchnorm, reduce, reshape,
             transpose, concat, split, slice_, gather, softmax, layernorm, gelu, attention, pool, resize,
             cast, where, constant_chain, if_branch]


def random_model(seed: int, max_ops: int = 8) -> onnx.ModelProto:
    """A small random model (checker-valid); dim 0 symbolic in about half of them."""
    rng = np.random.default_rng(seed)
    b = Builder(rng, symbolic=bool(rng.random() < 0.5))
    batch = 2
    kind = rng.integers(3)
    if kind == 0:
        b.graph_input([batch, int(rng.choice([2, 3, 4])), int(rng.choice([4, 5, 6, 8])), int(rng.choice([4, 6, 8]))])
    elif kind == 1:
        b.graph_input([batch, int(rng.choice([3, 4, 5])), int(rng.choice([4, 6, 8]))])
    else:
        b.graph_input([batch, int(rng.choice([3, 4, 8, 16]))])
    if rng.random() < 0.3:  # a second input of the same shape
        b.graph_input([batch] + list(b.pool[0][1][1:]))
    steps = int(rng.integers(2, max_ops + 1))
    done = tries = 0
    while done < steps and tries < steps * 6:
        tries += 1
        if TEMPLATES[rng.integers(len(TEMPLATES))](b):
            done += 1
        if sum(int(np.prod(numeric(s))) for _, s in b.pool[-1:]) > 20000:  # keep graphs small
            break
    outs = [b.pool[-1]]
    extra = [p for p in b.pool[1:-1] if not any(p[0] == i.name for i in b.inputs)]
    if extra and rng.random() < 0.4:
        outs.append(extra[rng.integers(len(extra))])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs]
    graph = helper.make_graph(b.nodes, f"fuzz{seed}", b.inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    model.producer_name = "graphopt-fuzz"
    return model


def random_feed(model: onnx.ModelProto, seed: int, batch: int = 2) -> dict:
    rng = np.random.default_rng(seed + 7919)
    feed = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
        feed[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feed
