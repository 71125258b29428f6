"""graphopt's GPU runtime vs PyTorch eager, same weights, fp32 and fp16, CUDA-event medians.

Models (built here from one seeded weight dict, as ONNX for graphopt and as torch.nn.functional
calls for PyTorch):
  bert:   BERT-style encoder, 6 layers, hidden 384, 12 heads, FFN 1536, seq 128 (input: embeddings)
  resnet: ResNet-18-style CNN (7x7 stem, 4 stages of 2 basic blocks, 64..512 channels), 224x224
at batch 1 and 32. Each run is timed alone between two CUDA events after warm-up; the table gives
the median per (model, batch, precision) for graphopt (plain, and replayed as a CUDA graph) and
PyTorch, and the ratios graphopt / PyTorch (< 1 is faster).
graphopt compiles the model (-O2 --target graphopt by default: fused Attention, SkipLayerNorm,
BiasGelu, FusedConv for the GPU kernels) and runs it through Session.run_device (CuPy in, CuPy out:
no host copies in the timed region).

    python bench/gpu_bench.py                     # needs an NVIDIA GPU, CuPy (graphopt[gpu]) and torch
    python bench/gpu_bench.py --runs 50 --models bert --batches 1
    python bench/gpu_bench.py --check-cpu         # no GPU: build both models, check them on the CPU
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYERS, HIDDEN, HEADS, FFN, SEQ = 6, 384, 12, 1536, 128
STAGES = [(64, 1), (128, 2), (256, 2), (512, 2)]  # (channels, stride of the stage's first block)


# ----------------------------------------------------------------------------- weights
def bert_weights(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    w = {}
    for i in range(LAYERS):
        for name, shape in (("q", (HIDDEN, HIDDEN)), ("k", (HIDDEN, HIDDEN)), ("v", (HIDDEN, HIDDEN)),
                            ("o", (HIDDEN, HIDDEN)), ("f1", (HIDDEN, FFN)), ("f2", (FFN, HIDDEN))):
            w[f"l{i}.{name}.w"] = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
            w[f"l{i}.{name}.b"] = (0.02 * rng.standard_normal(shape[1])).astype(np.float32)
        for ln in ("ln1", "ln2"):
            w[f"l{i}.{ln}.g"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
            w[f"l{i}.{ln}.b"] = (0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    return w


def resnet_blocks():
    """(name, in_ch, out_ch, stride) of every basic block."""
    blocks, cin = [], 64
    for s, (ch, stride) in enumerate(STAGES):
        for b in range(2):
            blocks.append((f"s{s}b{b}", cin, ch, stride if b == 0 else 1))
            cin = ch
    return blocks


def resnet_weights(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    w = {}

    def conv(name, cout, cin, k):
        w[name + ".w"] = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        w[name + ".bn.scale"] = (1 + 0.1 * rng.standard_normal(cout)).astype(np.float32)
        w[name + ".bn.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        w[name + ".bn.mean"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        w[name + ".bn.var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    conv("stem", 64, 3, 7)
    for name, cin, cout, stride in resnet_blocks():
        conv(name + ".c1", cout, cin, 3)
        conv(name + ".c2", cout, cout, 3)
        if stride != 1 or cin != cout:
            conv(name + ".down", cout, cin, 1)
    w["fc.w"] = (rng.standard_normal((1000, 512)) / np.sqrt(512)).astype(np.float32)
    w["fc.b"] = (0.01 * rng.standard_normal(1000)).astype(np.float32)
    return w


# ----------------------------------------------------------------------------- ONNX models
class _G:
    def __init__(self, weights):
        self.nodes, self.inits, self.n = [], [numpy_helper.from_array(v, k) for k, v in weights.items()], 0

    def const(self, value, dtype=np.int64):
        self.n += 1
        name = f"const{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op, ins, **attrs):
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out


def bert_onnx(batch, weights) -> onnx.ModelProto:
    g, x = _G(weights), "x"
    d = HIDDEN // HEADS
    heads_shape = g.const([batch, SEQ, HEADS, d])
    merged_shape = g.const([batch, SEQ, HIDDEN])
    scale = g.const(1.0 / np.sqrt(d), np.float32)
    for i in range(LAYERS):
        p = f"l{i}."
        lin = lambda t, n: g.op("Add", [g.op("MatMul", [t, p + n + ".w"]), p + n + ".b"])  # noqa: E731
        q, k, v = (g.op("Transpose", [g.op("Reshape", [lin(x, n), heads_shape])], perm=[0, 2, 1, 3])
                   for n in ("q", "k", "v"))
        kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
        probs = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, kt]), scale])], axis=-1)
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merged_shape])
        x = g.op("LayerNormalization", [g.op("Add", [x, lin(ctx, "o")]), p + "ln1.g", p + "ln1.b"], epsilon=1e-12)
        ff = lin(g.op("Gelu", [lin(x, "f1")]), "f2")
        x = g.op("LayerNormalization", [g.op("Add", [x, ff]), p + "ln2.g", p + "ln2.b"], epsilon=1e-12)
    g.nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(g.nodes, "bert", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [batch, SEQ, HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, SEQ, HIDDEN])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def resnet_onnx(batch, weights) -> onnx.ModelProto:
    g = _G(weights)

    def conv_bn(x, name, stride, pad, relu=True):
        y = g.op("Conv", [x, name + ".w"], strides=[stride, stride], pads=[pad] * 4)
        y = g.op("BatchNormalization", [y] + [f"{name}.bn.{k}" for k in ("scale", "bias", "mean", "var")],
                 epsilon=1e-5)
        return g.op("Relu", [y]) if relu else y
    x = conv_bn("x", "stem", 2, 3)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for name, cin, cout, stride in resnet_blocks():
        y = conv_bn(conv_bn(x, name + ".c1", stride, 1), name + ".c2", 1, 1, relu=False)
        short = conv_bn(x, name + ".down", stride, 0, relu=False) if (stride != 1 or cin != cout) else x
        x = g.op("Relu", [g.op("Add", [y, short])])
    flat = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    g.nodes.append(helper.make_node("Gemm", [flat, "fc.w", "fc.b"], ["y"], transB=1))
    graph = helper.make_graph(g.nodes, "resnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [batch, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1000])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


# ----------------------------------------------------------------------------- PyTorch eager, same weights
def torch_model(kind, weights, device, dtype):
    """A callable running the same network with torch.nn.functional on `weights` moved to device."""
    import torch
    import torch.nn.functional as F
    w = {k: torch.from_numpy(v).to(device=device, dtype=dtype) for k, v in weights.items()}
    d = HIDDEN // HEADS

    def bert(x):
        b = x.shape[0]
        for i in range(LAYERS):
            p = f"l{i}."
            lin = lambda t, n: t @ w[p + n + ".w"] + w[p + n + ".b"]  # noqa: E731
            q, k, v = (lin(x, n).reshape(b, SEQ, HEADS, d).transpose(1, 2) for n in ("q", "k", "v"))
            probs = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / np.sqrt(d)), dim=-1)
            ctx = (probs @ v).transpose(1, 2).reshape(b, SEQ, HIDDEN)
            x = F.layer_norm(x + lin(ctx, "o"), (HIDDEN,), w[p + "ln1.g"], w[p + "ln1.b"], eps=1e-12)
            x = F.layer_norm(x + lin(F.gelu(lin(x, "f1")), "f2"), (HIDDEN,), w[p + "ln2.g"], w[p + "ln2.b"],
                             eps=1e-12)
        return x

    def conv_bn(x, name, stride, pad, relu=True):
        y = F.conv2d(x, w[name + ".w"], stride=stride, padding=pad)
        y = F.batch_norm(y, w[name + ".bn.mean"], w[name + ".bn.var"], w[name + ".bn.scale"], w[name + ".bn.bias"],
                         training=False, eps=1e-5)
        return F.relu(y) if relu else y

    def resnet(x):
        x = F.max_pool2d(conv_bn(x, "stem", 2, 3), 3, 2, 1)
        for name, cin, cout, stride in resnet_blocks():
            y = conv_bn(conv_bn(x, name + ".c1", stride, 1), name + ".c2", 1, 1, relu=False)
            short = conv_bn(x, name + ".down", stride, 0, relu=False) if (stride != 1 or cin != cout) else x
            x = F.relu(y + short)
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), w["fc.w"], w["fc.b"])
    return bert if kind == "bert" else resnet


MODELS = {"bert": (bert_weights, bert_onnx, lambda b: (b, SEQ, HIDDEN)),
          "resnet": (resnet_weights, resnet_onnx, lambda b: (b, 3, 224, 224))}


# ----------------------------------------------------------------------------- timing
def _median_ms(fn, runs, warmup, event, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start, end = event(), event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) if hasattr(start, "elapsed_time") else None)
    return statistics.median(times)


def run_gpu(args) -> int:
    try:
        import cupy as cp
        import torch
        from graphopt.runtime.gpu.session import require_gpu
        require_gpu()
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
    except Exception as e:
        print(f"gpu_bench: needs an NVIDIA GPU with CuPy (pip install '.[gpu]') and PyTorch with CUDA: {e}",
              file=sys.stderr)
        print("gpu_bench: nothing measured. `python bench/gpu_bench.py --check-cpu` checks the models without a GPU.",
              file=sys.stderr)
        return 1
    import graphopt
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cp.__version__}, "
          f"torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{'model':8} {'batch':>5} {'prec':>5} {'graphopt ms':>12} {'+cuda graph':>12} {'torch ms':>10} "
          f"{'ratio':>7} {'ratio graph':>12} {'max |diff|':>11}")
    for kind in args.models:
        make_w, make_onnx, in_shape = MODELS[kind]
        weights = make_w()
        for batch in args.batches:
            model = make_onnx(batch, weights)
            compiled = graphopt.compile(model, level=args.level, target=args.target) if args.level else model
            x = np.random.default_rng(1).standard_normal(in_shape(batch)).astype(np.float32)
            for prec in args.precisions:
                tdt = torch.float16 if prec == "fp16" else torch.float32
                torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
                torch.backends.cudnn.allow_tf32 = prec == "tf32"
                net = torch_model(kind, weights, "cuda", tdt)
                tx = torch.from_numpy(x).to("cuda", tdt)
                sess = graphopt.Session(compiled, device="gpu", precision=prec)
                replay = graphopt.Session(compiled, device="gpu", precision=prec, cuda_graph=True)
                gx = cp.asarray(x.astype(np.float16) if prec == "fp16" else x)
                with torch.inference_mode():
                    ours = _median_ms(lambda: sess.run_device(None, {"x": gx}), args.runs, args.warmup,
                                      lambda: cp.cuda.Event(), cp.cuda.Device().synchronize)
                    graphed = _median_ms(lambda: replay.run_device(None, {"x": gx}), args.runs, args.warmup,
                                         lambda: cp.cuda.Event(), cp.cuda.Device().synchronize)
                    theirs = _median_ms(lambda: net(tx), args.runs, args.warmup,
                                        lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize)
                    diff = float(np.max(np.abs(cp.asnumpy(sess.run_device(None, {"x": gx})[0]).astype(np.float32)
                                               - net(tx).float().cpu().numpy())))
                note = "" if replay.cuda_graph_error is None else f"  (no graph: {replay.cuda_graph_error})"
                print(f"{kind:8} {batch:>5} {prec:>5} {ours:>12.3f} {graphed:>12.3f} {theirs:>10.3f} "
                      f"{ours / theirs:>6.2f}x {graphed / theirs:>11.2f}x {diff:>11.3g}{note}")
    return 0


def _cupy_event_elapsed():
    """cupy.cuda.Event has no elapsed_time method: give it one (get_elapsed_time(start, end))."""
    try:
        import cupy as cp
    except Exception:
        return
    if not hasattr(cp.cuda.Event, "elapsed_time"):
        cp.cuda.Event.elapsed_time = lambda self, end: cp.cuda.get_elapsed_time(self, end)


def check_cpu(args) -> int:
    """Without a GPU: the ONNX models are valid, ORT and graphopt's CPU runtime agree on them, and (if
    torch is installed) the PyTorch functional models with the same weights agree with ORT."""
    import onnxruntime as ort

    import graphopt
    try:
        import torch
    except ImportError:
        torch = None
    ok = True
    for kind in args.models:
        make_w, make_onnx, in_shape = MODELS[kind]
        weights = make_w()
        model = make_onnx(1, weights)
        onnx.checker.check_model(model, full_check=True)
        x = np.random.default_rng(1).standard_normal(in_shape(1)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        compiled = graphopt.compile(model, level=args.level, target=args.target) if args.level else model
        ours = graphopt.Session(compiled).run(None, {"x": x})[0]
        err = float(np.max(np.abs(ours - want)))
        line = (f"{kind}: ONNX model valid; graphopt -O{args.level} --target {args.target} CPU vs ORT "
                f"max |diff| {err:.3g}")
        ok &= err < 1e-3 * max(1.0, float(np.max(np.abs(want))))
        if torch is not None:
            with torch.inference_mode():
                t = torch_model(kind, weights, "cpu", torch.float32)(torch.from_numpy(x)).numpy()
            terr = float(np.max(np.abs(t - want)))
            ok &= terr < 1e-3 * max(1.0, float(np.max(np.abs(want))))
            line += f"; PyTorch (same weights) vs ORT max |diff| {terr:.3g}"
        else:
            line += "; PyTorch not installed: its model was not checked"
        print(line)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=lambda s: s.split(","), default=["bert", "resnet"])
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32])
    ap.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "fp16"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--level", type=int, default=2, help="graphopt -O level applied before the GPU session")
    ap.add_argument("--target", default="graphopt", choices=["onnx", "graphopt"],
                    help="compile target: graphopt (default) keeps fused ops such as Attention for the GPU kernels")
    ap.add_argument("--check-cpu", action="store_true", help="check the models on the CPU (no GPU needed)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    if args.check_cpu:
        return check_cpu(args)
    _cupy_event_elapsed()
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
