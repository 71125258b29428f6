"""`graphopt run | bench | verify`: the runtime's commands. cli.py calls add_runtime_commands(sub);
each command is a function of the parsed args that returns the exit status."""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import time

import numpy as np

from graphopt.cli import feeds
from graphopt.errors import GraphoptError, UsageError


def add_runtime_commands(sub) -> None:
    r = sub.add_parser("run", help="run a model with graphopt's runtime and summarize its outputs")
    r.add_argument("model")
    r.add_argument("--random", action="store_true", help=argparse.SUPPRESS)  # random data is the default now
    _common(r)
    r.add_argument("--output-dir", metavar="DIR", help="also save every output as DIR/<name>.npy")
    r.set_defaults(handler=cmd_run)

    b = sub.add_parser("bench", help="time Session.run (optionally against ONNX Runtime)")
    b.add_argument("model")
    b.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    b.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    b.add_argument("--threads", type=int, default=None, help="intra-op threads for both runtimes")
    b.add_argument("--compare", choices=["ort"], help="also time ONNX Runtime (ORT_ENABLE_ALL) in this process")
    b.add_argument("--profile", action="store_true", help="also print time per op type (one profiled run)")
    _common(b)
    b.set_defaults(handler=cmd_bench)

    v = sub.add_parser("verify", help="compare two models (ORT) or graphopt's runtime with ORT on one model")
    v.add_argument("model")
    v.add_argument("other", nargs="?", help="second model: compare A and B, both run in ONNX Runtime")
    v.add_argument("--rtol", type=float, default=1e-4)
    v.add_argument("--atol", type=float, default=1e-5)
    v.add_argument("--runs", type=int, default=2, help="random input sets to try (default 2)")
    _common(v)
    v.set_defaults(handler=cmd_verify)


def _common(p) -> None:
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="cpu: NumPy runtime (default); gpu: CuPy runtime (needs graphopt[gpu] and a GPU)")
    p.add_argument("--gpu-fallback", action="store_true",
                   help="with --device gpu: run ops that have no GPU kernel on the CPU instead of failing")
    feeds.add_arguments(p)  # --input, --inputs, --dim, --input-shape, --seed


def _device(args) -> dict:
    """Session options from --device / --gpu-fallback (nothing for the CPU: its call stays as it was)."""
    if getattr(args, "device", "cpu") == "gpu":
        return {"device": "gpu", "gpu_fallback": args.gpu_fallback}
    return {}


def _load(path: str):
    from graphopt.runtime.session import load_model
    if not os.path.exists(path):  # exit 1 like every command (a UsageError in the API, as in onnxruntime)
        raise GraphoptError(f"model file not found: {path}")
    return load_model(path)


@contextlib.contextmanager
def _random_hint(feed_options_given: bool):
    """A kernel failure on made-up inputs may be the inputs' fault (a guessed dim): say how to give real ones."""
    from graphopt.errors import KernelFailed
    try:
        yield
    except KernelFailed as e:
        if feed_options_given:
            raise
        raise KernelFailed(f"{e} (on random inputs with the dims noted above: set real sizes with --dim NAME=V / "
                           f"--input-shape INPUT=D0,D1,... or give real data with --input / --inputs)") from e


def _given(args) -> bool:
    """Whole feeds came from files: no made-up input to blame."""
    return bool(args.inputs)


def cmd_run(args) -> int:
    from graphopt.runtime.session import Session
    model = _load(args.model)
    sess = Session(model, **_device(args))
    feed = feeds.feeds_for(args, model)[0]
    with _random_hint(_given(args)):
        outputs = sess.run(None, feed)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    for arg, value in zip(sess.get_outputs(), outputs):
        print(_describe(arg.name, value))
        if args.output_dir:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", arg.name) or "output"
            np.save(os.path.join(args.output_dir, safe + ".npy"), np.asarray(value), allow_pickle=False)
    return 0


def _describe(name: str, value) -> str:
    if isinstance(value, list):
        return f"{name}: sequence of {len(value)} tensors"
    if value is None:
        return f"{name}: empty optional"
    a = np.asarray(value)
    head = f"{name}: shape {list(a.shape)} {a.dtype}"
    if a.size and a.dtype.kind in "biuf":
        f = a.astype(np.float64)
        return f"{head} min {f.min():.6g} max {f.max():.6g} mean {f.mean():.6g}"
    return head


def _time(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def cmd_bench(args) -> int:
    from graphopt.runtime.session import Session
    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    model = _load(args.model)
    sess = Session(model, threads=args.threads, **_device(args))
    feed = feeds.feeds_for(args, model)[0]
    with _random_hint(_given(args)):
        ours = _time(lambda: sess.run(None, feed), args.runs, args.warmup)
    print(_timing("graphopt", ours))
    sess.run(None, feed, profile=True)  # one instrumented run: peak memory, time per op
    print(f"peak activation memory: {sess.peak_activation_bytes / 2**20:.2f} MiB "
          f"(intermediate values; weights and inputs not counted)")
    if args.threads and not sess.threads_applied:
        print("note: --threads could not cap NumPy's BLAS threads here (no threadpoolctl, no OpenBLAS found)")
    if args.profile:
        print(sess.last_profile.format())
    if args.compare == "ort":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if args.threads:
            opts.intra_op_num_threads = args.threads
        opts.log_severity_level = 3
        ref = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        theirs = _time(lambda: ref.run(None, feed), args.runs, args.warmup)
        print(_timing("onnxruntime", theirs))
        print(f"ratio graphopt/onnxruntime (median): {statistics.median(ours) / statistics.median(theirs):.2f}x")
    return 0


def _timing(label: str, times: list[float]) -> str:
    ms = [t * 1e3 for t in times]
    return (f"{label}: median {statistics.median(ms):.3f} ms, min {min(ms):.3f} ms, max {max(ms):.3f} ms "
            f"({len(ms)} runs)")


def _has_graphopt_ops(model) -> bool:
    """ONNX Runtime cannot run graphopt's own fused ops; such a model is verified in graphopt's runtime."""
    from graphopt.compiler.report import walk_nodes
    return any(n.domain == "ai.graphopt" for n in walk_nodes(model.graph))


def cmd_verify(args) -> int:
    from graphopt.runtime.session import Session
    from graphopt.verify import compare_arrays, ort_session
    a = _load(args.model)
    feed_list = feeds.feeds_for(args, a, count=max(args.runs, 1))
    ref = ort_session(a)
    if args.other and _has_graphopt_ops(b := _load(args.other)):  # `compile --target graphopt` output
        sess = Session(b, **_device(args))
        run_cand = lambda feed: sess.run(names, feed)  # noqa: E731
        label = f"{args.other} (graphopt runtime: it has ai.graphopt ops) vs {args.model} (onnxruntime)"
    elif args.other:
        cand = ort_session(b)
        run_cand = lambda feed: cand.run(names, feed)  # noqa: E731
        label = f"{args.other} (onnxruntime) vs {args.model} (onnxruntime)"
    else:
        sess = Session(a, **_device(args))
        run_cand = lambda feed: sess.run(names, feed)  # noqa: E731
        label = f"graphopt runtime vs onnxruntime on {args.model}"
    names = [o.name for o in ref.get_outputs()]
    worst: dict = {}
    for feed in feed_list:
        for name, want, got in zip(names, ref.run(names, feed), run_cand(feed)):
            err = compare_arrays(name, want, got, rtol=args.rtol, atol=args.atol)
            prev = worst.get(name)
            if prev is None or (prev.ok and not err.ok) or err.max_abs > prev.max_abs:
                worst[name] = err
    print(label)
    for name in names:
        e = worst[name]
        note = f" ({e.note})" if e.note else ""
        print(f"  {name}: max abs {e.max_abs:.3g}, max rel {e.max_rel:.3g} {'PASS' if e.ok else 'FAIL'}{note}")
    ok = all(e.ok for e in worst.values())
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
