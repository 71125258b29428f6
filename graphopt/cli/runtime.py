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

from graphopt.errors import UsageError


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    return name, value


def _dims(pairs) -> dict:
    dims = {}
    for name, value in pairs or []:
        try:
            dims[name] = int(value)
        except ValueError:
            raise UsageError(f"--dim {name}={value}: the value must be an integer") from None
    return dims


def add_runtime_commands(sub) -> None:
    r = sub.add_parser("run", help="run a model with graphopt's runtime and summarize its outputs")
    r.add_argument("model")
    r.add_argument("--input", action="append", type=_pair, default=[], metavar="NAME=FILE.npy",
                   help="feed input NAME from a .npy file (repeatable)")
    r.add_argument("--random", action="store_true", help="fill inputs not given by --input with random data")
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
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    p.add_argument("--dim", action="append", type=_pair, default=[], metavar="NAME=VALUE",
                   help="value of a symbolic dimension for random inputs (default 1)")


def _device(args) -> dict:
    """Session options from --device / --gpu-fallback (nothing for the CPU: its call stays as it was)."""
    if getattr(args, "device", "cpu") == "gpu":
        return {"device": "gpu", "gpu_fallback": args.gpu_fallback}
    return {}


def _load(path: str):
    from graphopt.runtime.session import load_model
    return load_model(path)


def _random_feed(model, seed: int, dims: dict) -> dict:
    from graphopt.verify import random_feed
    return random_feed(model, seed=seed, dims=dims, default_dim=1)


@contextlib.contextmanager
def _dims_hint(model, dims: dict):
    """A kernel failure on random inputs whose symbolic dims defaulted to 1 names those dims: an
    image model given a 1x1 image fails deep inside (a Concat of mismatched feature maps), and
    the fix is a --dim, not a bug report."""
    from graphopt.errors import KernelFailed
    try:
        yield
    except KernelFailed as e:
        defaulted = sorted({d.dim_param for vi in model.graph.input if vi.type.HasField("tensor_type")
                            for d in vi.type.tensor_type.shape.dim
                            if d.dim_param and d.dim_param not in dims} - set(dims))
        if not defaulted:
            raise
        raise KernelFailed(f"{e} (the random inputs set the symbolic dims {', '.join(defaulted)} to 1; "
                           f"a real size may be needed: --dim {defaulted[-1]}=VALUE)") from e


def cmd_run(args) -> int:
    from graphopt.runtime.session import Session
    model = _load(args.model)
    sess = Session(model, **_device(args))
    feed = {}
    for name, file in args.input:
        if not os.path.exists(file):
            raise UsageError(f"--input {name}: file not found: {file}")
        feed[name] = np.load(file, allow_pickle=False)
    missing = [a.name for a in sess.get_inputs() if a.name not in feed]
    dims = _dims(args.dim) if missing else {}
    if missing:
        if not args.random:
            raise UsageError(f"no data for input(s) {missing}: pass --input NAME=FILE.npy or --random")
        rnd = _random_feed(model, args.seed, dims)
        feed.update({k: rnd[k] for k in missing})
    with _dims_hint(model, dims) if missing else contextlib.nullcontext():
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
    dims = _dims(args.dim)
    feed = _random_feed(model, args.seed, dims)
    with _dims_hint(model, dims):
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
    dims = _dims(args.dim)
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
    for i in range(max(args.runs, 1)):
        feed = _random_feed(a, args.seed + i, dims)
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
