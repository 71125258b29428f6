"""Per-node Python overhead of graphopt's NumPy runtime on small models, vs ONNX Runtime.

For each model: graphopt.compile(model, level=2, target=...) run by graphopt.Session, and ORT (all
optimizations, 1 thread) on the original model, in one process, on the golden inputs (light-zoo
models: a seeded random feed). The runtimes take turns run by run; medians are printed with the
graphopt/ORT ratio and microseconds per planned step (graphopt time / steps), then the minimum
over the runs of each (on a shared machine: the cost without interference) and their ratio.

    python bench/overhead_bench.py                        # the small models in models/
    python bench/overhead_bench.py --models squeezenet,resnet50 --runs 30
    python bench/overhead_bench.py --profile custom_domain   # cProfile of Session.run
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SMALL = ["custom_domain", "shape_chain", "redundant_ops", "loop_subgraph", "external_data", "if_subgraph",
         "output_aliasing", "transformer_block", "bert_encoder", "convnet"]


def load(name, target):
    import onnx
    from runtime_bench import LIGHT

    import graphopt
    from graphopt import golden
    from graphopt.verify import random_feed
    light = LIGHT / f"light_{name}.onnx"
    if light.exists():
        model = onnx.load(str(light))
        feed = random_feed(model, seed=0)
    else:
        model = onnx.load(str(golden.model_path(name)))
        feed = golden.load_golden(name).inputs
    return model, graphopt.compile(model, level=2, target=target), feed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SMALL))
    ap.add_argument("--target", default="graphopt")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--profile", default=None, help="cProfile Session.run of this model instead")
    args = ap.parse_args()
    from runtime_bench import interleaved_times, ort_session

    from graphopt.runtime.session import Session

    if args.profile:
        import cProfile
        import pstats
        _, compiled, feed = load(args.profile, args.target)
        sess = Session(compiled, threads=1)
        for _ in range(args.warmup):
            sess.run(None, feed)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.runs):
            sess.run(None, feed)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return

    print(f"{'model':<18} {'steps':>5} {'graphopt us':>12} {'ORT us':>9} {'ratio':>6} {'us/step':>8}"
          f" {'min g us':>9} {'min ORT':>8} {'ratio':>6}")
    for name in args.models.split(","):
        model, compiled, feed = load(name, args.target)
        sess = Session(compiled, threads=1)
        try:
            ort = ort_session(model, 1)
        except Exception as e:  # noqa: BLE001  (a model ORT cannot load: graphopt alone)
            ort = None
            print(f"# {name}: ORT cannot load it ({type(e).__name__})")
        fns = {"g": lambda s=sess, f=feed: s.run(None, f)}
        if ort is not None:
            fns["ort"] = lambda s=ort, f=feed: s.run(None, f)
        times = interleaved_times(fns, args.runs, args.warmup)  # min: the cost without interference
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        steps = len(sess._plan.steps)
        g, o = med["g"] * 1e6, med.get("ort", 0) * 1e6
        bg, bo = best["g"] * 1e6, best.get("ort", 0) * 1e6
        ratio = f"{g / o:6.2f}" if o else "     -"
        best_ratio = f"{bg / bo:6.2f}" if bo else "     -"
        print(f"{name:<18} {steps:>5} {g:>12.1f} {o:>9.1f} {ratio} {g / max(steps, 1):>8.2f}"
              f" {bg:>9.1f} {bo:>8.1f} {best_ratio}")


if __name__ == "__main__":
    main()
