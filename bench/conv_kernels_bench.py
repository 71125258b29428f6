"""Row-wide conv kernels (kernels/cpu/depthwise.py) on and off, vs ONNX Runtime, in one process.

For each model: graphopt.compile(model, level=2) run by graphopt.Session twice, once with the
row-wide path disabled (every conv takes the plain im2col / Winograd path it took before the
kernel existed) and once as shipped, and ONNX Runtime (all optimizations) on the original model,
all with the same thread count. The three take turns run by run (load from other processes hits
them alike); medians are reported with the graphopt/ORT ratios. --shapes adds the same
comparison for single Conv nodes of the models' typical depthwise / grouped / dense shapes.

    python bench/conv_kernels_bench.py                       # light_shufflenet + mobilenet_yolo
    python bench/conv_kernels_bench.py --runs 30 --shapes
    python bench/conv_kernels_bench.py --models light_resnet50,light_squeezenet,convnet --runs 5
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from runtime_bench import interleaved_medians, ort_session

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

# (C_in, C_out, group, H=W, kernel, stride): ShuffleNet / MobileNet-style convs
SHAPES = [(272, 272, 272, 14, 3, 1), (136, 136, 136, 28, 3, 1), (544, 544, 544, 7, 3, 1), (32, 32, 32, 112, 3, 1),
          (480, 480, 480, 14, 5, 1), (144, 144, 144, 56, 3, 2), (136, 136, 136, 28, 3, 2),
          (128, 128, 32, 28, 3, 1), (64, 32, 1, 16, 3, 1), (48, 48, 1, 8, 3, 1)]


@contextlib.contextmanager
def plain_convs():
    """Sessions first run inside this block keep the pre-row-wide conv paths (the choice is
    cached per input shape at the first run)."""
    from graphopt.kernels.cpu.depthwise import RowWideConv
    saved = RowWideConv.suits
    RowWideConv.suits = staticmethod(lambda *a, **k: False)
    try:
        yield
    finally:
        RowWideConv.suits = saved


def compare(model, graphopt_model, feed, args):
    """Median seconds of before / after / ort, and the max abs error of both graphopt runs vs ORT."""
    from graphopt.runtime.session import Session
    ort_sess = ort_session(model, args.threads)
    want = ort_sess.run(None, feed)
    with plain_convs():
        before = Session(graphopt_model, threads=args.threads)
        got_before = before.run(None, feed)
    after = Session(graphopt_model, threads=args.threads)
    got_after = after.run(None, feed)
    err = max(float(np.max(np.abs(np.asarray(g, np.float64) - w))) for got in (got_before, got_after)
              for g, w in zip(got, want))
    t = interleaved_medians({"before": lambda: before.run(None, feed), "after": lambda: after.run(None, feed),
                 "ort": lambda: ort_sess.run(None, feed)}, args.runs)
    return t, err


def conv_node_model(cin, cout, group, hw, k, stride, rng):
    w = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], group=group, kernel_shape=[k, k],
                            strides=[stride, stride], pads=[k // 2] * 4)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def line(name, t, err):
    before, after, ort = t["before"], t["after"], t["ort"]
    return (f"{name:<34} {before * 1e3:>9.3f} {after * 1e3:>9.3f} {ort * 1e3:>9.3f} "
            f"{before / after:>7.2f}x {before / ort:>7.2f} {after / ort:>7.2f} {err:>9.1e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="light_shufflenet,mobilenet_yolo",
                    help="comma-separated: models/ golden names or onnx light zoo names (light_resnet50, ...)")
    ap.add_argument("--shapes", action="store_true", help="also time single Conv nodes")
    args = ap.parse_args(argv)
    import graphopt
    from graphopt import golden
    print(f"{'':<34} {'before ms':>9} {'after ms':>9} {'ORT ms':>9} {'speedup':>8} {'bef/ORT':>7} {'aft/ORT':>7} "
          f"{'max|err|':>9}   ({args.threads} thread(s), median of {args.runs} alternating runs)")
    ratios = {"before": [], "after": []}
    rng = np.random.default_rng(0)
    from graphopt.verify import random_feed
    for name in args.models.split(","):
        if name in golden.list_models():
            model, feed = onnx.load(str(golden.model_path(name))), golden.load_golden(name).inputs
        else:  # the onnx package's light zoo, on a seeded random input
            model = onnx.load(str(LIGHT / f"{name}.onnx"))
            feed = random_feed(model, seed=0, default_dim=1)
        t, err = compare(model, graphopt.compile(model, level=2, target="graphopt"), feed, args)
        for k, values in ratios.items():
            values.append(t[k] / t["ort"])
        print(line(name, t, err), flush=True)
    gm = {k: math.exp(sum(map(math.log, v)) / len(v)) for k, v in ratios.items()}
    print(f"geomean graphopt/ORT: before {gm['before']:.2f}, after {gm['after']:.2f}")
    if args.shapes:
        print("single Conv nodes (C_in, C_out, group, H=W, k, stride):")
        for cin, cout, group, hw, k, stride in SHAPES:
            model = conv_node_model(cin, cout, group, hw, k, stride, rng)
            feed = {"X": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
            t, err = compare(model, model, feed, args)
            print(line(f"  {(cin, cout, group, hw, k, stride)}", t, err), flush=True)


if __name__ == "__main__":
    main()
